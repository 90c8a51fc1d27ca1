//! Where a one-time code is sent: an email address or a phone number.
//!
//! Both are normalised when parsed, so two spellings of the same address are
//! one account: an email is trimmed and its domain lower-cased; a phone number
//! is parsed and stored in E.164. An invalid one cannot be constructed.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// Why an email address or phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    /// Empty after trimming.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Longer than the limit.
    #[error("{kind} is longer than {max} characters")]
    TooLong {
        /// "email address" or "phone number".
        kind: &'static str,
        /// The limit.
        max: usize,
    },
    /// Non-ASCII characters are refused so that look-alike letters from other
    /// scripts cannot create a second account for what a person reads as the
    /// same address.
    #[error("email address must be ASCII (internationalised addresses are not supported)")]
    NonAsciiEmail,
    /// Not an address of the form local@domain.
    #[error("email address is not valid: {0}")]
    InvalidEmail(String),
    /// Not a phone number in international format.
    #[error("phone number must be in international format, starting with + and the country code")]
    PhoneNotInternational,
    /// Parsed, but not a number that can exist.
    #[error("phone number is not a valid number")]
    InvalidPhone,
}

/// A normalised email address: trimmed, ASCII, with a lower-cased domain.
///
/// The local part keeps its case: RFC 5321 lets a mail server distinguish it,
/// although almost none do.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The longest address a mail server must accept (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// Parses and normalises an address.
    pub fn parse(input: &str) -> Result<Self, ContactError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ContactError::Empty("email address"));
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(ContactError::TooLong {
                kind: "email address",
                max: Self::MAX_LEN,
            });
        }
        if !trimmed.is_ascii() {
            return Err(ContactError::NonAsciiEmail);
        }
        let (local, domain) = trimmed
            .rsplit_once('@')
            .ok_or_else(|| ContactError::InvalidEmail("missing @".into()))?;
        let normalised = format!("{local}@{}", domain.to_ascii_lowercase());
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal();
        email_address::EmailAddress::parse_with_options(&normalised, options)
            .map_err(|e| ContactError::InvalidEmail(e.to_string()))?;
        if !domain.contains('.') {
            return Err(ContactError::InvalidEmail("domain has no dot".into()));
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.0)
    }
}

/// A phone number in E.164 form (`+` then up to 15 digits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Longer input than this is refused before parsing.
    pub const MAX_INPUT_LEN: usize = 32;

    /// Parses an international number (spaces, dashes and brackets allowed)
    /// and normalises it to E.164.
    pub fn parse(input: &str) -> Result<Self, ContactError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ContactError::Empty("phone number"));
        }
        if trimmed.chars().count() > Self::MAX_INPUT_LEN {
            return Err(ContactError::TooLong {
                kind: "phone number",
                max: Self::MAX_INPUT_LEN,
            });
        }
        if !trimmed.starts_with('+') {
            return Err(ContactError::PhoneNotInternational);
        }
        if !trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
        {
            return Err(ContactError::InvalidPhone);
        }
        let number = phonenumber::parse(None, trimmed).map_err(|_| ContactError::InvalidPhone)?;
        if !phonenumber::is_valid(&number) {
            return Err(ContactError::InvalidPhone);
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    /// The number in E.164.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.0)
    }
}

/// An identifier a user signs in with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contact {
    /// Codes go by email.
    Email(EmailAddress),
    /// Codes go by SMS.
    Phone(PhoneNumber),
}

impl Contact {
    /// A stable text key that names the kind and the normalised value, for
    /// example `email:ann@example.com` or `phone:+14155550100`.
    pub fn key(&self) -> String {
        match self {
            Contact::Email(e) => format!("email:{e}"),
            Contact::Phone(p) => format!("phone:{p}"),
        }
    }

    /// Parses a key produced by [`Contact::key`].
    pub fn from_key(key: &str) -> Result<Self, ContactError> {
        match key.split_once(':') {
            Some(("email", rest)) => EmailAddress::parse(rest).map(Contact::Email),
            Some(("phone", rest)) => PhoneNumber::parse(rest).map(Contact::Phone),
            _ => Err(ContactError::InvalidEmail("unknown contact kind".into())),
        }
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Email(e) => e.fmt(f),
            Contact::Phone(p) => p.fmt(f),
        }
    }
}

impl FromStr for EmailAddress {
    type Err = ContactError;
    fn from_str(s: &str) -> Result<Self, ContactError> {
        Self::parse(s)
    }
}

impl FromStr for PhoneNumber {
    type Err = ContactError;
    fn from_str(s: &str) -> Result<Self, ContactError> {
        Self::parse(s)
    }
}

impl Serialize for EmailAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_domain_lower_cased() {
        let e = EmailAddress::parse("  Ann.Lee@Example.COM \n").unwrap();
        assert_eq!(e.as_str(), "Ann.Lee@example.com");
    }

    #[test]
    fn invalid_emails_are_refused() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "a@",
            "@b.com",
            "a@@b.com",
            "a b@c.com",
            "a@localhost",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(
            EmailAddress::parse(&long),
            Err(ContactError::TooLong { .. })
        ));
    }

    #[test]
    fn look_alike_letters_are_refused() {
        // Cyrillic 'а' in place of Latin 'a'.
        assert_eq!(
            EmailAddress::parse("\u{430}nn@example.com"),
            Err(ContactError::NonAsciiEmail)
        );
        assert_eq!(
            EmailAddress::parse("ann@ex\u{430}mple.com"),
            Err(ContactError::NonAsciiEmail)
        );
    }

    #[test]
    fn phone_numbers_are_normalised_to_e164() {
        let p = PhoneNumber::parse(" +1 (415) 555-2671 ").unwrap();
        assert_eq!(p.as_str(), "+14155552671");
        let uk = PhoneNumber::parse("+44 20 7946 0958").unwrap();
        assert_eq!(uk.as_str(), "+442079460958");
    }

    #[test]
    fn invalid_phone_numbers_are_refused() {
        assert_eq!(
            PhoneNumber::parse("4155552671"),
            Err(ContactError::PhoneNotInternational)
        );
        assert_eq!(
            PhoneNumber::parse("+1 415 555"),
            Err(ContactError::InvalidPhone)
        );
        assert_eq!(
            PhoneNumber::parse("+1 415 555 abcd"),
            Err(ContactError::InvalidPhone)
        );
        // Full-width digits look like digits but are not ASCII.
        assert_eq!(
            PhoneNumber::parse("+１４１５５５５２６７１"),
            Err(ContactError::InvalidPhone)
        );
        assert!(PhoneNumber::parse(&format!("+{}", "1".repeat(40))).is_err());
    }

    #[test]
    fn contact_keys_round_trip() {
        let c = Contact::Email(EmailAddress::parse("a@b.co").unwrap());
        assert_eq!(Contact::from_key(&c.key()).unwrap(), c);
        let p = Contact::Phone(PhoneNumber::parse("+14155552671").unwrap());
        assert_eq!(Contact::from_key(&p.key()).unwrap(), p);
    }
}
