//! The happy paths of signing in.

use codeedex_tests::app::spawn_app;

#[tokio::test]
async fn a_code_mailed_over_smtp_signs_a_new_user_in() {
    let app = spawn_app().await;
    let signed_in = app.sign_in_email("Ann@Example.COM").await;
    assert!(signed_in.new_user);
    assert_eq!(signed_in.user.email.as_deref(), Some("Ann@example.com"));
    let me = app.get_as(&signed_in.tokens.access_token, "/v1/me").await;
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["id"], signed_in.user.id.to_string());

    let again = app.sign_in_email("Ann@EXAMPLE.com").await;
    assert!(!again.new_user, "the second sign-in reuses the account");
    assert_eq!(again.user.id, signed_in.user.id);
    app.assert_no_secrets_in_logs();
}
