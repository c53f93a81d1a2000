//! Customers in the panel: their configuration as YAML with every secret
//! shown as `********`, and applying an edited configuration, whose
//! errors come back with their line and column. A secret left as
//! `********` keeps the value stored for that source or offsite target.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;
use levee_proto::config::{CustomerConfig, Secret};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::auth::{authed, may_change, may_view};
use super::{blocking, ApiError, ApiResult, UiState};
use crate::config::{locate, Seg};
use crate::secrets::{redact, ServerKey, REDACTED};

pub async fn list(State(state): State<UiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, |s| {
        let appliances = s.appliances()?;
        let rows: Vec<Value> = s
            .customers()?
            .into_iter()
            .map(|c| {
                let n = appliances
                    .iter()
                    .filter(|a| {
                        a.customer.as_deref() == Some(c.name.as_str()) && a.revoked_at.is_none()
                    })
                    .count();
                json!({
                    "name": c.name,
                    "display_name": c.config.display_name,
                    "sources": c.config.sources.len(),
                    "offsite": c.config.offsite.len(),
                    "update_channel": c.config.update_channel,
                    "heartbeat_interval": c.config.heartbeat_interval,
                    "appliances": n,
                    "updated_at": c.updated_at,
                })
            })
            .collect();
        Ok(json!({"customers": rows}))
    })
    .await?;
    Ok(Json(v))
}

/// `GET /ui/api/customers/{name}`: the configuration as YAML, redacted.
pub async fn show(
    State(state): State<UiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let v = blocking(&state, move |s| {
        let c = s
            .customer(&name)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no customer `{name}`")))?;
        let yaml = serde_norway::to_string(&redact(&c.config))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let quota = s.offsite_quota(&c.name)?;
        Ok(json!({
            "name": c.name,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
            "yaml": yaml,
            "offsite_quota": quota,
        }))
    })
    .await?;
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
pub struct ApplyBody {
    yaml: String,
    /// Validate and show the changes only.
    #[serde(default)]
    dry_run: bool,
}

/// A configuration error as the page shows it: at its line.
fn config_error(e: crate::config::ConfigError) -> ApiError {
    let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    if let Some((line, column)) = e.position {
        err.body["line"] = line.into();
        err.body["column"] = column.into();
    }
    err.body["message"] = e.message.into();
    err
}

/// The secrets of a configuration by what they belong to (a source's or
/// an offsite target's name), so a reordered list keeps them right.
fn secrets_by_owner(c: &mut CustomerConfig) -> HashMap<String, &mut Secret> {
    let mut out = HashMap::new();
    for s in c.sources.iter_mut() {
        if let Some(p) = s.password.as_mut() {
            out.insert(format!("sources/{}/password", s.name), p);
        }
    }
    for o in c.offsite.iter_mut() {
        if let Some(k) = o.secret_access_key.as_mut() {
            out.insert(format!("offsite/{}/secret_access_key", o.name), k);
        }
    }
    out
}

/// Puts the stored secret back wherever the text still says `********`;
/// an error (at its line) where there is no stored secret to keep.
pub fn keep_redacted(
    text: &str,
    new: &mut CustomerConfig,
    old: Option<&CustomerConfig>,
) -> Result<(), crate::config::ConfigError> {
    let mut old = old.cloned();
    let kept: HashMap<String, String> = match old.as_mut() {
        Some(o) => secrets_by_owner(o)
            .into_iter()
            .map(|(k, v)| (k, v.0.clone()))
            .collect(),
        None => HashMap::new(),
    };
    // Positions for errors: the secret's path by index.
    let mut paths = HashMap::new();
    for (i, s) in new.sources.iter().enumerate() {
        paths.insert(
            format!("sources/{}/password", s.name),
            vec![Seg::Key("sources"), Seg::Index(i), Seg::Key("password")],
        );
    }
    for (i, o) in new.offsite.iter().enumerate() {
        paths.insert(
            format!("offsite/{}/secret_access_key", o.name),
            vec![
                Seg::Key("offsite"),
                Seg::Index(i),
                Seg::Key("secret_access_key"),
            ],
        );
    }
    for (owner, secret) in secrets_by_owner(new) {
        if secret.0 != REDACTED {
            continue;
        }
        match kept.get(&owner) {
            Some(v) => secret.0 = v.clone(),
            None => {
                let path = paths.get(&owner).cloned().unwrap_or_default();
                return Err(crate::config::ConfigError {
                    file: "configuration".into(),
                    position: locate(text, &path),
                    message: format!(
                        "{}: `********` keeps a stored secret, but none is stored for {owner}: type the secret",
                        crate::config::display_path(&path)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Refuses `password_file` in text from the panel: it would read a file on
/// the server into a configuration that appliances receive.
fn no_password_files(text: &str) -> Result<(), crate::config::ConfigError> {
    let raw: CustomerConfig = match serde_norway::from_str(text) {
        Ok(r) => r,
        // The full parse reports syntax errors with their position.
        Err(_) => return Ok(()),
    };
    if let Some(i) = raw.sources.iter().position(|s| s.password_file.is_some()) {
        let path = [
            Seg::Key("sources"),
            Seg::Index(i),
            Seg::Key("password_file"),
        ];
        return Err(crate::config::ConfigError {
            file: "configuration".into(),
            position: locate(text, &path),
            message: format!(
                "{}: not accepted in the panel (it names a file on the server): give `password`",
                crate::config::display_path(&path)
            ),
        });
    }
    Ok(())
}

/// Validates `text` against what is stored: the configuration to store
/// (secrets in clear, kept ones filled in) and the lines that changed.
pub fn prepare(
    key: &ServerKey,
    text: &str,
    stored: Option<&CustomerConfig>,
) -> Result<(CustomerConfig, Vec<String>), ApiError> {
    no_password_files(text).map_err(config_error)?;
    let empty = std::env::temp_dir().join("levee-panel-no-files");
    let mut customer = crate::config::parse("configuration", text, &empty).map_err(config_error)?;
    let old = stored
        .map(|c| key.open_config(c))
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    keep_redacted(text, &mut customer.config, old.as_ref()).map_err(config_error)?;
    let changes = match &old {
        Some(o) => crate::cli::customer::diff(o, &customer.config),
        None => vec![format!("+ customer {} created", customer.config.customer)],
    };
    Ok((customer.config, changes))
}

/// `POST /ui/api/customers {"yaml": "...", "dry_run": false}`: creates or
/// updates the customer the text names.
pub async fn apply(
    State(state): State<UiState>,
    method: Method,
    headers: HeaderMap,
    Json(body): Json<ApplyBody>,
) -> ApiResult<Json<Value>> {
    let who = authed(&state, &headers).await?;
    may_change(&who, &method, &headers)?;
    let key = state.key.clone();
    let operator = who.operator.name.clone();
    let v = blocking(&state, move |s| {
        // The name comes from the text; look the stored one up first.
        let name = serde_norway::from_str::<CustomerConfig>(&body.yaml)
            .map(|c| c.customer)
            .ok();
        let stored = match &name {
            Some(n) => s.customer(n)?.map(|c| c.config),
            None => None,
        };
        let (config, changes) = prepare(&key, &body.yaml, stored.as_ref())?;
        if !body.dry_run && !changes.is_empty() {
            s.put_customer(&key.seal_config(&config))?;
            let target = format!("customer:{}", config.customer);
            s.add_audit(&operator, "customer-apply", &target, &changes.join("; "))?;
            info!(operator = %operator, customer = %config.customer, changes = changes.len(), "panel: customer applied");
        }
        Ok(json!({
            "customer": config.customer,
            "changes": changes,
            "applied": !body.dry_run && !changes.is_empty(),
        }))
    })
    .await?;
    Ok(Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str =
        "customer: acme\nsources:\n  - name: f\n    smb: smb://u@h/s\n    password: hunter2\n";

    #[test]
    fn a_redacted_secret_keeps_the_stored_one_and_a_typed_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        let (first, _) = prepare(&key, YAML, None).unwrap();
        let stored = key.seal_config(&first);
        let shown = serde_norway::to_string(&redact(&first)).unwrap();
        assert!(
            shown.contains("********") && !shown.contains("hunter2"),
            "{shown}"
        );
        let edited = shown.replace("5m", "1m");
        let (kept, changes) = prepare(&key, &edited, Some(&stored)).unwrap();
        assert_eq!(kept.sources[0].password.as_ref().unwrap().0, "hunter2");
        assert!(
            changes.iter().all(|c| !c.contains("password")),
            "{changes:?}"
        );
        let typed = shown
            .replace("'********'", "new-secret")
            .replace("\"********\"", "new-secret");
        let (new, _) = prepare(&key, &typed, Some(&stored)).unwrap();
        assert_eq!(new.sources[0].password.as_ref().unwrap().0, "new-secret");
    }

    #[test]
    fn errors_come_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        let bad = YAML.replace("smb://u@h/s", "ftp://nope");
        let e = prepare(&key, &bad, None).unwrap_err();
        assert_eq!(e.body["line"], 4, "{}", e.body);
        let secret_without_value = YAML.replace("hunter2", "'********'");
        let e = prepare(&key, &secret_without_value, None).unwrap_err();
        assert_eq!(e.body["line"], 5, "{}", e.body);
        let file = YAML.replace("password: hunter2", "password_file: /etc/shadow");
        let e = prepare(&key, &file, None).unwrap_err();
        assert_eq!(e.body["line"], 5, "{}", e.body);
    }
}
