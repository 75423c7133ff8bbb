//! A few calls of the sparc REST API for the load generators: JSON POSTs, registering and
//! logging in users.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The password every benchmark user gets (it meets the registration policy).
pub const PASSWORD: &str = "L0adGen-Passw0rd!";

/// POSTs `body` as JSON (with a bearer token when given) and returns the JSON answer; a non-2xx
/// status is an error carrying the status and body.
pub async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

/// Logs `username` in on the service at `api` and returns the access token.
pub async fn login(
    client: &reqwest::Client,
    api: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let body = post(
        client,
        format!("{api}/api/v1/auth/login"),
        None,
        json!({"username": username, "password": password}),
    )
    .await
    .with_context(|| format!("logging in {username}"))?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access token")
}

/// Registers `username` (password [`PASSWORD`], an e-mail under `load.test`) and logs it in:
/// the access token.
pub async fn register_and_login(
    client: &reqwest::Client,
    api: &str,
    username: &str,
) -> anyhow::Result<String> {
    post(
        client,
        format!("{api}/api/v1/auth/register"),
        None,
        json!({"username": username, "email": format!("{username}@load.test"), "password": PASSWORD}),
    )
    .await
    .with_context(|| format!("registering {username}"))?;
    login(client, api, username, PASSWORD).await
}
