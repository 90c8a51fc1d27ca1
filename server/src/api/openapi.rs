//! The OpenAPI document, generated from the handlers' annotations.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{account, auth_routes, browser_session, tasks};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The REST API's description.
#[derive(OpenApi)]
#[openapi(
    info(title = "CodeeDex Task Sync API", description = "Passwordless sign-in and task sync."),
    paths(
        auth_routes::request_code,
        auth_routes::verify,
        auth_routes::refresh,
        auth_routes::logout,
        browser_session::sign_in,
        browser_session::refresh,
        browser_session::logout,
        account::me,
        account::sessions,
        account::revoke_session,
        account::audit_events,
        tasks::list,
        tasks::create,
        tasks::get,
        tasks::update,
        tasks::delete,
        tasks::history,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/openapi.json", web::get().to(document));
}

async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
