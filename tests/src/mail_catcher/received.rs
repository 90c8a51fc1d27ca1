//! What the catcher received: one message, and reading its text (headers,
//! RFC 2047 encoded words, base64 and quoted-printable bodies, multipart
//! parts) well enough to get at the codes in the mails lettre builds.

use base64::Engine as _;

/// One message accepted by the catcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Envelope sender (`MAIL FROM`), without angle brackets; empty for the null path `<>`.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), without angle brackets, in the order given.
    pub to: Vec<String>,
    /// The whole message as sent after `DATA` (headers and body), dot-stuffing undone,
    /// lines ending in CRLF, without the final `.` line.
    pub data: String,
    /// Whether the message came over TLS.
    pub tls: bool,
    /// The user name the sender authenticated as, if it did.
    pub authenticated_as: Option<String>,
}

impl ReceivedMail {
    /// The message's header fields in order, unfolded, with RFC 2047 encoded words
    /// (`=?utf-8?b?...?=`) decoded.
    pub fn headers(&self) -> Vec<(String, String)> {
        let (head, _) = split_head_body(&self.data);
        parse_headers(head)
            .into_iter()
            .map(|(name, value)| (name, decode_encoded_words(&value)))
            .collect()
    }

    /// The first header field named `name` (case-insensitive), decoded as in [`Self::headers`].
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The decoded `Subject` header.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The readable text of the message: `Content-Transfer-Encoding` (base64 or
    /// quoted-printable) undone and multipart messages walked. The `text/plain` parts are
    /// returned if there are any, otherwise all `text/*` parts (e.g. HTML only), joined by
    /// a newline. Text is taken as UTF-8 (invalid bytes replaced).
    pub fn body_text(&self) -> String {
        let (head, body) = split_head_body(&self.data);
        let mut parts = Vec::new();
        collect_text_parts(head, body, 0, &mut parts);
        let plain: Vec<&str> = parts
            .iter()
            .filter(|(mime, _)| mime == "text/plain")
            .map(|(_, text)| text.as_str())
            .collect();
        if plain.is_empty() {
            parts
                .iter()
                .map(|(_, text)| text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            plain.join("\n")
        }
    }

    /// The first standalone code of exactly `digits` digits in [`Self::body_text`].
    pub fn code(&self, digits: usize) -> Option<String> {
        extract_code(&self.body_text(), digits)
    }
}

/// Finds the first standalone run of exactly `digits` ASCII digits in `text`.
///
/// "Standalone" means the run is neither preceded nor followed by a letter or digit of any
/// script, so `"Your code: 123456."` yields `123456`, while the digits inside `"1234567"`,
/// `"ab123456"` or `"123456x"` are skipped. Pass decoded text (e.g.
/// [`ReceivedMail::body_text`]), not the raw message, whose headers and encoded bodies
/// may hold other digit runs. Returns `None` for `digits == 0`.
pub fn extract_code(text: &str, digits: usize) -> Option<String> {
    if digits == 0 {
        return None;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let before_ok = start == 0 || !chars[start - 1].is_alphanumeric();
        let after_ok = i == chars.len() || !chars[i].is_alphanumeric();
        if i - start == digits && before_ok && after_ok {
            return Some(chars[start..i].iter().collect());
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Minimal MIME reading: enough to get at the text of the messages lettre builds.

/// Splits a message (or MIME part) at the first empty line.
fn split_head_body(text: &str) -> (&str, &str) {
    if let Some(rest) = text.strip_prefix("\r\n") {
        return ("", rest);
    }
    if let Some(rest) = text.strip_prefix('\n') {
        return ("", rest);
    }
    let crlf = text.find("\r\n\r\n").map(|i| (i, 4));
    let lf = text.find("\n\n").map(|i| (i, 2));
    let split = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match split {
        Some((i, len)) => (&text[..i], &text[i + len..]),
        None => (text, ""),
    }
}

/// Header fields, unfolded, values trimmed (not decoded).
fn parse_headers(head: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    headers
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `type/subtype` lowercased, and the parameters (names lowercased, values unquoted).
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = value.split(';');
    let mime = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = pieces
        .filter_map(|piece| {
            let (name, value) = piece.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim().to_ascii_lowercase(), value.to_string()))
        })
        .collect();
    (mime, params)
}

/// Pushes `(mime type, decoded text)` for every `text/*` leaf of the MIME tree.
fn collect_text_parts(head: &str, body: &str, depth: usize, out: &mut Vec<(String, String)>) {
    let headers = parse_headers(head);
    let (mime, params) = find_header(&headers, "Content-Type")
        .map(parse_content_type)
        .unwrap_or_else(|| ("text/plain".to_string(), Vec::new()));
    if mime.starts_with("multipart/") {
        let boundary = params.iter().find(|(name, _)| name == "boundary");
        if let (Some((_, boundary)), true) = (boundary, depth < 16) {
            for part in split_multipart(body, boundary) {
                let (part_head, part_body) = split_head_body(part);
                collect_text_parts(part_head, part_body, depth + 1, out);
            }
        }
        return;
    }
    if !(mime.starts_with("text/") || mime.is_empty()) {
        return;
    }
    let encoding = find_header(&headers, "Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let text = match encoding.as_str() {
        "base64" => decode_base64_body(body)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|| body.to_string()),
        "quoted-printable" => String::from_utf8_lossy(&decode_quoted_printable(body)).into_owned(),
        _ => body.to_string(),
    };
    let mime = if mime.is_empty() {
        "text/plain".to_string()
    } else {
        mime
    };
    out.push((mime, text));
}

/// The bodies of the parts of a multipart body (preamble and epilogue dropped).
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == delimiter || bare == close {
            if let Some(s) = start {
                // The line break before a delimiter belongs to the delimiter.
                let part = &body[s..pos];
                let part = part
                    .strip_suffix("\r\n")
                    .or_else(|| part.strip_suffix('\n'))
                    .unwrap_or(part);
                parts.push(part);
            }
            if bare == close {
                return parts;
            }
            start = Some(pos + line.len());
        }
        pos += line.len();
    }
    // No closing delimiter: take what follows the last delimiter.
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

fn decode_base64_body(body: &str) -> Option<Vec<u8>> {
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(compact).ok()
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `=XX` escapes in `bytes`; with `underscore_is_space`, as in RFC 2047's "Q".
fn decode_qp_escapes(bytes: &[u8], underscore_is_space: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'='
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(if underscore_is_space && b == b'_' {
            b' '
        } else {
            b
        });
        i += 1;
    }
}

/// RFC 2045 quoted-printable: `=XX` escapes, `=` at line end as a soft line break,
/// trailing whitespace on lines dropped; hard line breaks come out as CRLF.
fn decode_quoted_printable(body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let lines: Vec<&str> = body.split('\n').collect();
    for (index, line) in lines.iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_end_matches([' ', '\t']);
        match line.strip_suffix('=') {
            Some(soft) => decode_qp_escapes(soft.as_bytes(), false, &mut out),
            None => {
                decode_qp_escapes(line.as_bytes(), false, &mut out);
                if index + 1 < lines.len() {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    out
}

/// Decodes RFC 2047 encoded words (`=?charset?B?...?=`, `=?charset?Q?...?=`) in a header
/// value, dropping the whitespace between adjacent encoded words. Text is taken as UTF-8.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut after_encoded_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        let candidate = &rest[start + 2..];
        match decode_one_encoded_word(candidate) {
            Some((decoded, used)) => {
                if !(after_encoded_word && before.chars().all(char::is_whitespace)) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &candidate[used..];
                after_encoded_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = candidate;
                after_encoded_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `text` follows a `=?`; returns the decoded word and how many bytes of `text` it used.
fn decode_one_encoded_word(text: &str) -> Option<(String, usize)> {
    let (_charset, rest) = text.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let encoded = &rest[..end];
    if encoded.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => decode_base64_body(encoded)?,
        "Q" | "q" => {
            let mut out = Vec::new();
            decode_qp_escapes(encoded.as_bytes(), true, &mut out);
            out
        }
        _ => return None,
    };
    let used = text.len() - rest.len() + end + 2;
    Some((String::from_utf8_lossy(&bytes).into_owned(), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_code_finds_standalone_runs_only() {
        assert_eq!(
            extract_code("Your code: 123456.", 6).as_deref(),
            Some("123456")
        );
        assert_eq!(
            extract_code("1234567 then 654321", 6).as_deref(),
            Some("654321")
        );
        assert_eq!(
            extract_code("ab123456 x123456y 222222", 6).as_deref(),
            Some("222222")
        );
        assert_eq!(
            extract_code("code=135790\r\n", 6).as_deref(),
            Some("135790")
        );
        assert_eq!(extract_code("12345", 6), None);
        assert_eq!(extract_code("123456", 0), None);
        assert_eq!(extract_code("é123456", 6), None);
    }

    #[test]
    fn quoted_printable_is_decoded() {
        let decoded = decode_quoted_printable("Code =C3=A9: 12=\r\n3456 \r\nend");
        assert_eq!(String::from_utf8(decoded).unwrap(), "Code é: 123456\r\nend");
        let mut out = Vec::new();
        decode_qp_escapes(b"a=3", false, &mut out);
        assert_eq!(out, b"a=3");
    }

    #[test]
    fn encoded_words_are_decoded() {
        assert_eq!(
            decode_encoded_words("=?utf-8?b?Q29kZQ==?= =?utf-8?q?_=C3=A9t=C3=A9?= ok"),
            "Code été ok"
        );
        assert_eq!(decode_encoded_words("plain =? text"), "plain =? text");
    }

    #[test]
    fn multipart_prefers_text_plain() {
        let mail = ReceivedMail {
            from: String::new(),
            to: vec![],
            tls: false,
            authenticated_as: None,
            data: "Content-Type: multipart/alternative;\r\n boundary=\"XyZ\"\r\n\r\n\
                   preamble\r\n--XyZ\r\nContent-Type: text/plain\r\n\
                   Content-Transfer-Encoding: base64\r\n\r\nWW91ciBjb2RlOiA0MjQyNDI=\r\n\
                   --XyZ\r\nContent-Type: text/html\r\n\r\n<p style=\"color:#111111\">424242</p>\r\n\
                   --XyZ--\r\n"
                .into(),
        };
        assert_eq!(mail.body_text(), "Your code: 424242");
        assert_eq!(mail.code(6).as_deref(), Some("424242"));
    }
}
