//! Logging in and out, and the checks every API call makes: a live
//! session, then for changes the CSRF token, the Origin, and an operator
//! who may change things.

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use tracing::{info, warn};

use super::session::{clear_cookie, cookie_token, same_secret, set_cookie};
use super::{blocking, password, ApiError, ApiResult, ClientAddr, ClientCert, UiState};
use crate::store::Operator;

/// A request with a live session: who, and their session's tokens.
#[derive(Debug, Clone)]
pub struct Authed {
    pub operator: Operator,
    pub token: String,
    pub csrf: String,
    /// Logged in with the operator's client certificate: an unused
    /// one-time password does not stand in the way.
    pub via_cert: bool,
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "not logged in (or the session ended): log in again",
    )
}

/// The operator behind the request's session cookie. The operator is read
/// from the store every time, so a removed operator or one made read-only
/// is refused or restricted at once.
pub async fn authed(state: &UiState, headers: &HeaderMap) -> ApiResult<Authed> {
    let token = cookie_token(headers).ok_or_else(unauthorized)?;
    let session = state.sessions.get(&token).ok_or_else(unauthorized)?;
    let name = session.operator.clone();
    let operator = blocking(state, move |s| Ok(s.operator(&name)?)).await?;
    // A certificate session ends with the certificate: a newer one issued
    // (`levee operator cert`), or revoked.
    let Some(operator) = operator.filter(|o| {
        session
            .cert
            .as_ref()
            .is_none_or(|fp| o.cert_sha256.as_ref() == Some(fp))
    }) else {
        state.sessions.remove(&token);
        return Err(unauthorized());
    };
    Ok(Authed {
        operator,
        token,
        csrf: session.csrf,
        via_cert: session.cert.is_some(),
    })
}

/// A page may only be viewed, a one-time password only replaced.
pub fn may_view(a: &Authed) -> ApiResult<()> {
    if a.operator.must_change && !a.via_cert {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "choose a new password first (POST /ui/api/password)",
        ));
    }
    Ok(())
}

/// The request comes from the panel's own pages (or a script without an
/// `Origin`): a cross-site page's form or fetch carries its own origin.
pub fn same_origin(headers: &HeaderMap) -> ApiResult<()> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin = origin.to_str().unwrap_or_default();
    if !host.is_empty() && origin == format!("https://{host}") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("request from another origin ({origin}) refused"),
    ))
}

/// The checks of a change: CSRF token, Origin, not read-only.
pub fn may_change(a: &Authed, method: &Method, headers: &HeaderMap) -> ApiResult<()> {
    if method == Method::GET || method == Method::HEAD {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    same_origin(headers)?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if sent.is_empty() || !same_secret(sent, &a.csrf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (X-CSRF-Token: the `csrf` of /ui/api/me)",
        ));
    }
    may_view(a)?;
    if a.operator.read_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("operator {} is read-only", a.operator.name),
        ));
    }
    Ok(())
}

/// A login: a name and password, or `{"certificate": true}` with the
/// operator's client certificate on the connection.
#[derive(Deserialize)]
pub struct Login {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    certificate: bool,
}

fn me_json(o: &Operator, csrf: &str, via_cert: bool) -> serde_json::Value {
    serde_json::json!({
        "operator": o.name,
        "read_only": o.read_only,
        "must_change": o.must_change && !via_cert,
        "login": if via_cert { "certificate" } else { "password" },
        "csrf": csrf,
    })
}

pub async fn login(
    State(state): State<UiState>,
    Extension(ClientAddr(peer)): Extension<ClientAddr>,
    cert: Option<Extension<Option<ClientCert>>>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> ApiResult<Response> {
    same_origin(&headers)?;
    let too_many = || {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many login attempts: wait a minute and try again",
        )
    };
    state
        .login_by_ip
        .check(&peer.ip())
        .map_err(|_| too_many())?;
    if body.certificate {
        let cert = cert.and_then(|Extension(c)| c);
        return login_with_certificate(&state, peer, cert).await;
    }
    let name = body.name.trim().to_string();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give your operator name",
        ));
    }
    state.login_by_name.check(&name).map_err(|_| too_many())?;
    let (n, pw) = (name.clone(), body.password);
    let operator = blocking(&state, move |s| {
        let op = s.operator(&n)?;
        // The same work whether or not the name exists.
        // An operator with no password (certificate only) costs as much.
        let hash = op
            .as_ref()
            .map(|o| o.password_hash.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| password::decoy_hash().to_string());
        let ok = password::verify(&pw, &hash) && op.is_some();
        s.add_audit(
            &n,
            if ok { "login" } else { "login-failed" },
            &format!("operator:{n}"),
            &format!("from {}", peer.ip()),
        )?;
        Ok(op.filter(|_| ok))
    })
    .await?;
    let Some(operator) = operator else {
        warn!(operator = %name, peer = %peer, "panel login refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong operator name or password",
        ));
    };
    let (token, csrf) = state.sessions.create(&operator.name, None);
    info!(operator = %operator.name, peer = %peer, "panel login");
    Ok((
        [(header::SET_COOKIE, set_cookie(&token))],
        Json(me_json(&operator, &csrf, false)),
    )
        .into_response())
}

/// A login with the operator's client certificate (verified against the
/// Levee CA in the handshake): it must name an operator (URI SAN
/// `levee:operator:<name>`) and be the one the store holds for them, so
/// an older certificate, a removed operator's or an appliance's is refused.
async fn login_with_certificate(
    state: &UiState,
    peer: std::net::SocketAddr,
    cert: Option<ClientCert>,
) -> ApiResult<Response> {
    let refused = |why: &str| {
        warn!(peer = %peer, reason = why, "panel certificate login refused");
        ApiError::new(StatusCode::UNAUTHORIZED, why.to_string())
    };
    let Some(cert) = cert else {
        return Err(refused(
            "no client certificate on this connection: import the one `levee operator cert NAME --out DIR` wrote, or log in with a password",
        ));
    };
    let Some(name) = cert.operator.clone() else {
        return Err(refused(
            "this certificate is not an operator's (only `levee operator cert` issues those)",
        ));
    };
    let (n, fp) = (name.clone(), cert.fingerprint.clone());
    let operator = blocking(state, move |s| {
        let op = s
            .operator(&n)?
            .filter(|o| o.cert_sha256.as_deref() == Some(fp.as_str()));
        s.add_audit(
            &n,
            if op.is_some() {
                "login"
            } else {
                "login-failed"
            },
            &format!("operator:{n}"),
            &format!("from {} with a client certificate", peer.ip()),
        )?;
        Ok(op)
    })
    .await?;
    let Some(operator) = operator else {
        return Err(refused(
            "this operator certificate was replaced or revoked, or its operator removed",
        ));
    };
    let (token, csrf) = state
        .sessions
        .create(&operator.name, Some(&cert.fingerprint));
    info!(operator = %operator.name, peer = %peer, "panel login with a client certificate");
    Ok((
        [(header::SET_COOKIE, set_cookie(&token))],
        Json(me_json(&operator, &csrf, true)),
    )
        .into_response())
}

pub async fn logout(
    State(state): State<UiState>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let a = authed(&state, &headers).await?;
    // Logging out is a change too (a cross-site page must not end a
    // session), but read-only operators may.
    same_origin(&headers)?;
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if method != Method::POST || !sent.is_some_and(|t| same_secret(t, &a.csrf)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token",
        ));
    }
    state.sessions.remove(&a.token);
    let name = a.operator.name.clone();
    blocking(&state, move |s| {
        Ok(s.add_audit(&name, "logout", &format!("operator:{name}"), "")?)
    })
    .await?;
    Ok((
        [(header::SET_COOKIE, clear_cookie())],
        Json(serde_json::json!({"logged_out": true})),
    )
        .into_response())
}

pub async fn me(
    State(state): State<UiState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let a = authed(&state, &headers).await?;
    Ok(Json(me_json(&a.operator, &a.csrf, a.via_cert)))
}

#[derive(Deserialize)]
pub struct NewPassword {
    current: String,
    new: String,
}

/// Replaces the operator's own password (the one-time one first of all);
/// their other sessions end.
pub async fn change_password(
    State(state): State<UiState>,
    method: Method,
    headers: HeaderMap,
    Json(body): Json<NewPassword>,
) -> ApiResult<Json<serde_json::Value>> {
    let a = authed(&state, &headers).await?;
    same_origin(&headers)?;
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if method != Method::POST || !sent.is_some_and(|t| same_secret(t, &a.csrf)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token",
        ));
    }
    if let Some(why) = password::weakness(&body.new, &a.operator.name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("new password: {why}"),
        ));
    }
    if body.new == body.current {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "new password: choose another than the current one",
        ));
    }
    let name = a.operator.name.clone();
    blocking(&state, move |s| {
        let op = s
            .operator(&name)?
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "operator removed"))?;
        if !password::verify(&body.current, &op.password_hash) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the current password is wrong",
            ));
        }
        let hash = password::hash(&body.new)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        s.set_operator_password(&name, &hash, false)?;
        s.add_audit(&name, "password", &format!("operator:{name}"), "")?;
        Ok(())
    })
    .await?;
    state
        .sessions
        .remove_operator(&a.operator.name, Some(&a.token));
    Ok(Json(serde_json::json!({"changed": true})))
}
