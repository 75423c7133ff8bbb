//! Auth and sessions (`/api/v1/auth`), black-box on both backends: registration and its
//! validation, login, refresh-token rotation and reuse detection, logout, the profile, password
//! change, session management, and every way a bearer token can fail to authenticate.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{PASSWORD, Response, TestApp, TestUser, both_backends, read};
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::{User, UserCommand};
use sparc_store::{CommandBus, EventMetadata};
use uuid::Uuid;

/// The signing key `TestApp` configures.
const TEST_SECRET: &str = "test-signing-key-that-is-long-enough-0123456789";

/// The fields of the contract's `User`, and nothing else (no password hash).
const USER_FIELDS: [&str; 11] = [
    "id",
    "username",
    "email",
    "role",
    "is_active",
    "is_verified",
    "created_at",
    "last_login",
    "full_name",
    "bio",
    "avatar_url",
];

fn assert_is_user(body: &Value, username: &str) {
    let keys: BTreeSet<&str> = body
        .as_object()
        .unwrap_or_else(|| panic!("a User object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = USER_FIELDS.into_iter().collect();
    assert_eq!(keys, expected, "exactly the User fields: {body}");
    assert_eq!(body["username"], username);
    assert!(Uuid::parse_str(body["id"].as_str().unwrap_or_default()).is_ok());
    let text = body.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "no password hash may leave the service: {text}"
    );
}

fn assert_rfc3339_utc(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"));
    assert!(text.ends_with('Z'), "UTC with Z: {text}");
    assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "{text}");
}

/// 401 with `WWW-Authenticate: Bearer` and a `detail` message.
#[track_caller]
fn assert_unauthorized(response: &Response, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        response.body
    );
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer"),
        "{what}: a 401 challenges for a bearer token"
    );
    assert!(
        response.body["detail"].is_string(),
        "{what}: {}",
        response.body
    );
}

async fn register(app: &TestApp, body: Value) -> Response {
    app.call(Method::POST, "/api/v1/auth/register", None, Some(body))
        .await
}

async fn login(app: &TestApp, username: &str, password: &str) -> Response {
    app.call(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Response {
    app.call(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh_token})),
    )
    .await
}

async fn me(app: &TestApp, token: &str) -> Response {
    app.get("/api/v1/auth/me", token).await
}

/// A second session of an existing user.
async fn second_session(app: &TestApp, user: &TestUser) -> TestUser {
    app.login(&user.username).await
}

/// The `detail` entries of a 422 at `["body", field]`.
fn errors_at<'a>(response: &'a Response, field: &str) -> Vec<&'a Value> {
    response.body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("a 422 detail list: {}", response.body))
        .iter()
        .filter(|e| e["loc"] == json!(["body", field]))
        .collect()
}

#[track_caller]
fn assert_invalid_field(response: &Response, field: &str, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{what}: {}",
        response.body
    );
    let errors = errors_at(response, field);
    assert!(
        !errors.is_empty(),
        "{what}: an error at body.{field}: {}",
        response.body
    );
    for error in errors {
        assert!(
            error["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert!(
            error["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{error}"
        );
    }
}

/// Polls until `check` holds: the read model that authenticates requests follows the log.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The claims of one of our tokens, read without checking the signature.
fn claims_of(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .expect("our token should be a JWT")
        .claims
}

fn sign(claims: &Value, algorithm: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing should work")
}

// ----- registration -----

both_backends!(
    registering_answers_201_with_the_user_and_no_password_hash,
    |app: TestApp| async move {
        let response = register(
            &app,
            json!({"username": "alice_1-x", "email": "alice@example.com", "password": PASSWORD, "full_name": "Alice A."}),
        )
        .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
        assert_is_user(&response.body, "alice_1-x");
        assert_eq!(response.body["email"], "alice@example.com");
        assert_eq!(response.body["role"], "user");
        assert_eq!(response.body["is_active"], true);
        assert_eq!(response.body["is_verified"], false);
        assert_eq!(response.body["full_name"], "Alice A.");
        assert_eq!(response.body["last_login"], Value::Null);
        assert_rfc3339_utc(&response.body["created_at"]);
    }
);

both_backends!(
    a_taken_username_or_email_is_400_with_the_contract_message,
    |app: TestApp| async move {
        app.user("alice").await;
        let same_name = register(
            &app,
            json!({"username": "alice", "email": "other@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(same_name.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            same_name.body,
            json!({"detail": "Username already registered"})
        );
        let same_email = register(
            &app,
            json!({"username": "bob", "email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(same_email.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            same_email.body,
            json!({"detail": "Email already registered"})
        );
    }
);

both_backends!(
    usernames_and_emails_are_unique_whatever_their_case,
    |app: TestApp| async move {
        app.user("alice").await;
        let same_name = register(
            &app,
            json!({"username": "ALICE", "email": "other@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(same_name.status, StatusCode::BAD_REQUEST);
        assert_eq!(same_name.body["detail"], "Username already registered");
        let same_email = register(
            &app,
            json!({"username": "bob", "email": "Alice@Example.COM", "password": PASSWORD}),
        )
        .await;
        assert_eq!(same_email.status, StatusCode::BAD_REQUEST);
        assert_eq!(same_email.body["detail"], "Email already registered");
    }
);

both_backends!(
    a_registration_refused_for_a_taken_email_leaves_the_username_free,
    |app: TestApp| async move {
        app.user("alice").await;
        let refused = register(
            &app,
            json!({"username": "bob", "email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let retried = register(
            &app,
            json!({"username": "bob", "email": "bob@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    }
);

both_backends!(
    an_invalid_username_or_email_is_422_at_that_field,
    |app: TestApp| async move {
        let long = "a".repeat(51);
        for (username, what) in [
            ("ab", "two characters"),
            (long.as_str(), "51 characters"),
            ("bad name", "a space"),
            ("bad.name", "a dot"),
        ] {
            let response = register(
                &app,
                json!({"username": username, "email": "x@example.com", "password": PASSWORD}),
            )
            .await;
            assert_invalid_field(&response, "username", what);
        }
        let fifty = "a".repeat(50);
        let accepted = register(
            &app,
            json!({"username": fifty, "email": "fifty@example.com", "password": PASSWORD}),
        )
        .await;
        assert_eq!(
            accepted.status,
            StatusCode::CREATED,
            "50 characters are fine"
        );
        for email in ["not-an-email", "a@", "@example.com", ""] {
            let response = register(
                &app,
                json!({"username": "carol", "email": email, "password": PASSWORD}),
            )
            .await;
            assert_invalid_field(&response, "email", email);
        }
        let long_name = register(
            &app,
            json!({"username": "carol", "email": "carol@example.com", "password": PASSWORD, "full_name": "n".repeat(101)}),
        )
        .await;
        assert_invalid_field(&long_name, "full_name", "a 101-character full_name");
    }
);

both_backends!(
    a_weak_password_is_422_for_each_rule_of_the_policy,
    |app: TestApp| async move {
        let too_long = format!("Aa1{}", "x".repeat(126));
        for (password, rule) in [
            ("Short1a", "at least 8 characters"),
            (too_long.as_str(), "at most 128 characters"),
            ("lowercase1", "an upper-case letter"),
            ("UPPERCASE1", "a lower-case letter"),
            ("NoDigitsHere", "a digit"),
        ] {
            let response = register(
                &app,
                json!({"username": "dave", "email": "dave@example.com", "password": password}),
            )
            .await;
            assert_invalid_field(&response, "password", rule);
        }
        let none_registered = login(&app, "dave", "Short1a").await;
        assert_unauthorized(&none_registered, "no weak registration went through");
    }
);

both_backends!(
    every_invalid_field_is_reported_in_one_422,
    |app: TestApp| async move {
        let response = register(
            &app,
            json!({"username": "x", "email": "nope", "password": "weak"}),
        )
        .await;
        for field in ["username", "email", "password"] {
            assert_invalid_field(&response, field, field);
        }
    }
);

// ----- login -----

both_backends!(
    logging_in_answers_the_user_and_a_bearer_token_pair,
    |app: TestApp| async move {
        app.user("alice").await;
        let response = login(&app, "alice", PASSWORD).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        let body = &response.body;
        assert_is_user(&body["user"], "alice");
        assert_rfc3339_utc(&body["user"]["last_login"]);
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 3600, "access tokens live 60 minutes");
        let access = body["access_token"].as_str().expect("an access token");
        let refresh_token = body["refresh_token"].as_str().expect("a refresh token");
        let claims = claims_of(access);
        assert_eq!(claims["type"], "access");
        assert_eq!(claims["sub"], body["user"]["id"]);
        assert_eq!(claims["username"], "alice");
        assert_eq!(claims["role"], "user");
        assert_eq!(claims_of(refresh_token)["type"], "refresh");
        let refresh_life = claims_of(refresh_token)["exp"].as_i64().unwrap_or_default()
            - claims_of(refresh_token)["iat"].as_i64().unwrap_or_default();
        assert_eq!(refresh_life, 7 * 24 * 3600, "refresh tokens live 7 days");
        assert_eq!(me(&app, access).await.status, StatusCode::OK);
    }
);

both_backends!(
    a_wrong_password_and_an_unknown_user_get_the_same_401,
    |app: TestApp| async move {
        app.user("alice").await;
        let wrong_password = login(&app, "alice", "Wrong-passw0rd").await;
        let unknown_user = login(&app, "nobody", PASSWORD).await;
        for (response, what) in [
            (&wrong_password, "wrong password"),
            (&unknown_user, "unknown user"),
        ] {
            assert_unauthorized(response, what);
            assert_eq!(
                response.body,
                json!({"detail": "Incorrect username or password"}),
                "{what}"
            );
        }
    }
);

both_backends!(
    failed_logins_back_off_per_account_whatever_the_address,
    |s| s.api.login_failures_before_backoff = 2,
    |app: TestApp| async move {
        app.user("alice").await;
        app.user("bob").await;
        for _ in 0..3 {
            let failed = login(&app, "alice", "Wrong-passw0rd").await;
            assert_unauthorized(&failed, "a wrong password");
        }
        // Closed for a second after the third failure: even the right password is refused
        // before it is checked, from any address (the per-IP limit is off here).
        let closed = login(&app, "alice", PASSWORD).await;
        assert_eq!(
            closed.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            closed.body
        );
        assert_eq!(closed.header("retry-after"), Some("1"));
        assert!(closed.body["detail"].is_string(), "{}", closed.body);
        let unknown = login(&app, "ALICE", "anything").await;
        assert_eq!(
            unknown.status,
            StatusCode::TOO_MANY_REQUESTS,
            "usernames fold case"
        );
        assert_eq!(login(&app, "bob", PASSWORD).await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(login(&app, "alice", PASSWORD).await.status, StatusCode::OK);
        // The success forgot the failures: two more are allowed again.
        for _ in 0..2 {
            assert_unauthorized(
                &login(&app, "alice", "Wrong-passw0rd").await,
                "allowed again",
            );
        }
        assert_eq!(login(&app, "alice", PASSWORD).await.status, StatusCode::OK);
    }
);

both_backends!(
    a_deactivated_user_cannot_log_in_and_loses_every_session,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        CommandBus::new(&app.db)
            .execute::<User>(
                &alice.id,
                UserCommand::SetActive {
                    active: false,
                    at: Utc::now(),
                },
                &EventMetadata::new("system", Uuid::now_v7().to_string()),
                None,
            )
            .await
            .expect("deactivating should work");
        let response = login(&app, "alice", PASSWORD).await;
        assert_unauthorized(&response, "inactive user");
        assert_eq!(response.body, json!({"detail": "User account is inactive"}));
        eventually("the deactivated user's access token is refused", || async {
            me(&app, &alice.token).await.status == StatusCode::UNAUTHORIZED
        })
        .await;
        assert_unauthorized(&me(&app, &alice.token).await, "access token");
        assert_unauthorized(&refresh(&app, &alice.refresh_token).await, "refresh token");
    }
);

both_backends!(
    token_lifetimes_follow_the_settings,
    |s| {
        s.api.access_token_minutes = 5;
        s.api.refresh_token_days = 2;
    },
    |app: TestApp| async move {
        app.user("alice").await;
        let response = login(&app, "alice", PASSWORD).await;
        assert_eq!(response.body["expires_in"], 300);
        let life = |token: &Value| {
            let claims = claims_of(token.as_str().expect("a token"));
            claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default()
        };
        assert_eq!(life(&response.body["access_token"]), 300);
        assert_eq!(life(&response.body["refresh_token"]), 2 * 24 * 3600);
        let rotated = refresh(
            &app,
            response.body["refresh_token"].as_str().expect("a token"),
        )
        .await;
        assert_eq!(rotated.body["expires_in"], 300);
        let sessions = app
            .get(
                "/api/v1/auth/sessions",
                rotated.body["access_token"].as_str().expect("a token"),
            )
            .await;
        let current = sessions
            .body
            .as_array()
            .and_then(|all| all.iter().find(|s| s["current"] == true))
            .expect("the current session")
            .clone();
        let expires_at =
            chrono::DateTime::parse_from_rfc3339(current["expires_at"].as_str().expect("a time"))
                .expect("RFC 3339");
        let days = (expires_at.with_timezone(&Utc) - Utc::now()).num_hours();
        assert!(
            (47..=48).contains(&days),
            "the session lives 2 days: {days} h"
        );
    }
);

// ----- refresh -----

both_backends!(
    refreshing_rotates_the_pair_and_the_new_tokens_work,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let rotated = refresh(&app, &alice.refresh_token).await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
        assert_eq!(rotated.body["token_type"], "bearer");
        assert_eq!(rotated.body["expires_in"], 3600);
        let access = rotated.body["access_token"]
            .as_str()
            .expect("an access token");
        let new_refresh = rotated.body["refresh_token"]
            .as_str()
            .expect("a refresh token");
        assert_ne!(new_refresh, alice.refresh_token);
        assert_eq!(
            claims_of(new_refresh)["sid"],
            claims_of(&alice.refresh_token)["sid"],
            "the session is the same"
        );
        let who = me(&app, access).await;
        assert_eq!(who.status, StatusCode::OK);
        assert_eq!(who.body["username"], "alice");
        let again = refresh(&app, new_refresh).await;
        assert_eq!(
            again.status,
            StatusCode::OK,
            "the new refresh token rotates too"
        );
    }
);

both_backends!(
    a_rotated_refresh_token_is_rejected,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let rotated = refresh(&app, &alice.refresh_token).await;
        assert_eq!(rotated.status, StatusCode::OK);
        assert_unauthorized(
            &refresh(&app, &alice.refresh_token).await,
            "the old refresh token",
        );
    }
);

both_backends!(
    a_refresh_token_used_twice_revokes_the_whole_session,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let other_session = second_session(&app, &alice).await;
        let rotated = refresh(&app, &alice.refresh_token).await;
        assert_eq!(rotated.status, StatusCode::OK);
        let newest_access = rotated.body["access_token"].as_str().expect("a token");
        let newest_refresh = rotated.body["refresh_token"].as_str().expect("a token");

        let reuse = refresh(&app, &alice.refresh_token).await;
        assert_unauthorized(&reuse, "reuse of a rotated refresh token");

        assert_unauthorized(
            &refresh(&app, newest_refresh).await,
            "the newest refresh token",
        );
        assert_unauthorized(
            &me(&app, newest_access).await,
            "the session's newest access token",
        );
        assert_unauthorized(
            &me(&app, &alice.token).await,
            "the session's first access token",
        );
        assert_eq!(
            me(&app, &other_session.token).await.status,
            StatusCode::OK,
            "another session of the same user is untouched"
        );
    }
);

both_backends!(
    two_concurrent_refreshes_with_one_token_never_yield_two_live_pairs,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let (first, second) = tokio::join!(
            refresh(&app, &alice.refresh_token),
            refresh(&app, &alice.refresh_token)
        );
        let winners: Vec<&Response> = [&first, &second]
            .into_iter()
            .filter(|r| r.status == StatusCode::OK)
            .collect();
        assert!(
            winners.len() <= 1,
            "one refresh token buys at most one pair: {} and {}",
            first.status,
            second.status
        );
        for loser in [&first, &second]
            .into_iter()
            .filter(|r| r.status != StatusCode::OK)
        {
            assert_unauthorized(loser, "the refresh that lost the race is a reuse");
        }
        if let Some(winner) = winners.first() {
            let access = winner.body["access_token"].as_str().expect("a token");
            assert_unauthorized(
                &me(&app, access).await,
                "the reuse revoked the session, the winner's pair included",
            );
        }
    }
);

both_backends!(
    a_token_that_is_not_a_refresh_token_cannot_refresh,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        assert_unauthorized(&refresh(&app, &alice.token).await, "an access token");
        assert_unauthorized(&refresh(&app, "not-a-jwt").await, "garbage");
        assert_eq!(
            me(&app, &alice.token).await.status,
            StatusCode::OK,
            "a refused refresh does not end the session"
        );
    }
);

// ----- logout -----

both_backends!(logging_out_ends_the_session, |app: TestApp| async move {
    let alice = app.user("alice").await;
    let other_session = second_session(&app, &alice).await;
    let response = app
        .post(
            "/api/v1/auth/logout",
            &alice.token,
            json!({"refresh_token": alice.refresh_token}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, json!({"message": "Logout successful"}));
    assert_unauthorized(
        &me(&app, &alice.token).await,
        "the access token after logout",
    );
    assert_unauthorized(
        &refresh(&app, &alice.refresh_token).await,
        "the refresh token after logout",
    );
    assert_eq!(
        me(&app, &other_session.token).await.status,
        StatusCode::OK,
        "other sessions stay"
    );
});

both_backends!(
    logging_out_needs_a_bearer_token,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let response = app
            .call(
                Method::POST,
                "/api/v1/auth/logout",
                None,
                Some(json!({"refresh_token": alice.refresh_token})),
            )
            .await;
        assert_unauthorized(&response, "logout without a bearer token");
        assert_eq!(
            refresh(&app, &alice.refresh_token).await.status,
            StatusCode::OK
        );
    }
);

// ----- profile -----

both_backends!(me_answers_the_callers_user, |app: TestApp| async move {
    let alice = app.user("alice").await;
    let response = me(&app, &alice.token).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_is_user(&response.body, "alice");
    assert_eq!(response.body["id"], alice.id.as_str());
    assert_unauthorized(
        &app.call(Method::GET, "/api/v1/auth/me", None, None).await,
        "me without a token",
    );
});

both_backends!(
    updating_me_changes_the_profile_fields,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let response = app
            .put(
                "/api/v1/auth/me",
                &alice.token,
                json!({"full_name": "Alice Liddell", "bio": "b".repeat(500), "avatar_url": "https://example.com/a.png"}),
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        assert_is_user(&response.body, "alice");
        assert_eq!(response.body["full_name"], "Alice Liddell");
        assert_eq!(response.body["avatar_url"], "https://example.com/a.png");
        let read = me(&app, &alice.token).await;
        assert_eq!(read.body["full_name"], "Alice Liddell");
        assert_eq!(read.body["bio"], "b".repeat(500));
        let partial = app
            .put("/api/v1/auth/me", &alice.token, json!({"bio": "short"}))
            .await;
        assert_eq!(partial.status, StatusCode::OK);
        assert_eq!(partial.body["bio"], "short");
        assert_eq!(
            partial.body["full_name"], "Alice Liddell",
            "absent fields stay"
        );
    }
);

both_backends!(
    over_long_profile_fields_are_422_and_change_nothing,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for (field, length) in [("full_name", 101), ("bio", 501), ("avatar_url", 501)] {
            let response = app
                .put(
                    "/api/v1/auth/me",
                    &alice.token,
                    json!({ field: "x".repeat(length) }),
                )
                .await;
            assert_invalid_field(&response, field, field);
        }
        let read = me(&app, &alice.token).await;
        assert_eq!(read.body["full_name"], Value::Null);
        assert_eq!(read.body["bio"], Value::Null);
    }
);

both_backends!(
    unknown_profile_fields_are_422_so_the_role_cannot_be_set,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for body in [
            json!({"role": "admin"}),
            json!({"is_active": false}),
            json!({"full_name": "A", "password_hash": "x"}),
        ] {
            let response = app.put("/api/v1/auth/me", &alice.token, body.clone()).await;
            assert_eq!(
                response.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {}",
                response.body
            );
            assert_eq!(
                response.body["detail"][0]["type"], "extra_forbidden",
                "{body}"
            );
        }
        let read = me(&app, &alice.token).await;
        assert_eq!(read.body["role"], "user");
        assert_eq!(read.body["full_name"], Value::Null);
    }
);

// ----- password change -----

both_backends!(
    a_wrong_current_password_is_400_and_changes_nothing,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let response = app
            .post(
                "/api/v1/auth/change-password",
                &alice.token,
                json!({"current_password": "Wrong-passw0rd", "new_password": "N3w-password"}),
            )
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            response.body,
            json!({"detail": "Current password is incorrect"})
        );
        assert_eq!(login(&app, "alice", PASSWORD).await.status, StatusCode::OK);
    }
);

both_backends!(
    changing_the_password_revokes_the_other_sessions_and_keeps_this_one,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let other_session = second_session(&app, &alice).await;
        let response = app
            .post(
                "/api/v1/auth/change-password",
                &alice.token,
                json!({"current_password": PASSWORD, "new_password": "N3w-password"}),
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        assert!(response.body["message"].is_string(), "{}", response.body);

        assert_eq!(
            me(&app, &alice.token).await.status,
            StatusCode::OK,
            "the session that changed the password stays"
        );
        assert_eq!(
            refresh(&app, &alice.refresh_token).await.status,
            StatusCode::OK,
            "and can still refresh"
        );
        assert_unauthorized(
            &me(&app, &other_session.token).await,
            "another session's access token",
        );
        assert_unauthorized(
            &refresh(&app, &other_session.refresh_token).await,
            "another session's refresh token",
        );
        assert_unauthorized(&login(&app, "alice", PASSWORD).await, "the old password");
        assert_eq!(
            login(&app, "alice", "N3w-password").await.status,
            StatusCode::OK,
            "the new password logs in"
        );
    }
);

both_backends!(a_weak_new_password_is_422, |app: TestApp| async move {
    let alice = app.user("alice").await;
    let response = app
        .post(
            "/api/v1/auth/change-password",
            &alice.token,
            json!({"current_password": PASSWORD, "new_password": "weakpass"}),
        )
        .await;
    assert_invalid_field(&response, "new_password", "weak new password");
    assert_eq!(login(&app, "alice", PASSWORD).await.status, StatusCode::OK);
});

// ----- sessions -----

both_backends!(
    the_sessions_list_shows_live_sessions_and_marks_the_current_one,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let with_agent = app
            .request(Method::POST, "/api/v1/auth/login", None)
            .header("user-agent", "sparc-tests/1.0")
            .json(&json!({"username": "alice", "password": PASSWORD}))
            .send()
            .await
            .expect("the service should answer");
        assert_eq!(with_agent.status(), StatusCode::OK);
        app.user("bob").await;

        let response = app.get("/api/v1/auth/sessions", &alice.token).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        let sessions = response.body.as_array().expect("a list of sessions");
        assert_eq!(sessions.len(), 2, "alice's two sessions and none of bob's");
        let current_sid = claims_of(&alice.token)["sid"].clone();
        for session in sessions {
            for field in ["created_at", "expires_at", "last_used_at"] {
                assert_rfc3339_utc(&session[field]);
            }
            assert_eq!(session["ip_address"], "127.0.0.1");
            assert_eq!(
                session["current"],
                session["id"] == current_sid,
                "{session}"
            );
        }
        assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
        assert!(
            sessions
                .iter()
                .any(|s| s["user_agent"] == "sparc-tests/1.0"),
            "the login's user agent is recorded: {sessions:?}"
        );
    }
);

both_backends!(
    revoking_one_session_ends_only_that_one,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let other_session = second_session(&app, &alice).await;
        let other_sid = claims_of(&other_session.token)["sid"]
            .as_str()
            .expect("a session id")
            .to_owned();
        let response = app
            .delete(&format!("/api/v1/auth/sessions/{other_sid}"), &alice.token)
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        assert_eq!(
            response.body,
            json!({"message": "Session revoked successfully"})
        );
        assert_unauthorized(&me(&app, &other_session.token).await, "the revoked session");
        assert_eq!(me(&app, &alice.token).await.status, StatusCode::OK);
        let listed = app.get("/api/v1/auth/sessions", &alice.token).await;
        assert_eq!(listed.body.as_array().map(Vec::len), Some(1));
    }
);

both_backends!(
    revoking_an_unknown_or_someone_elses_session_is_404,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let unknown = app
            .delete(
                &format!("/api/v1/auth/sessions/{}", Uuid::now_v7()),
                &alice.token,
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
        assert!(unknown.body["detail"].is_string());
        let bobs_sid = claims_of(&bob.token)["sid"]
            .as_str()
            .expect("sid")
            .to_owned();
        let bobs = app
            .delete(&format!("/api/v1/auth/sessions/{bobs_sid}"), &alice.token)
            .await;
        assert_eq!(bobs.status, StatusCode::NOT_FOUND);
        assert_eq!(me(&app, &bob.token).await.status, StatusCode::OK);
        let malformed = app
            .delete("/api/v1/auth/sessions/not-a-uuid", &alice.token)
            .await;
        assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(malformed.body["detail"][0]["loc"], json!(["path", "id"]));
    }
);

both_backends!(
    revoking_all_sessions_ends_every_session_of_the_caller,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let other_session = second_session(&app, &alice).await;
        let bob = app.user("bob").await;
        let response = app.delete("/api/v1/auth/sessions", &alice.token).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        assert_unauthorized(&me(&app, &alice.token).await, "the calling session");
        assert_unauthorized(&me(&app, &other_session.token).await, "the other session");
        assert_unauthorized(
            &refresh(&app, &other_session.refresh_token).await,
            "the other session's refresh token",
        );
        assert_eq!(
            me(&app, &bob.token).await.status,
            StatusCode::OK,
            "bob is untouched"
        );
        assert_eq!(login(&app, "alice", PASSWORD).await.status, StatusCode::OK);
    }
);

// ----- bearer tokens -----

both_backends!(
    a_missing_bearer_token_is_401_not_authenticated_with_a_challenge,
    |app: TestApp| async move {
        for path in ["/api/v1/auth/me", "/api/v1/auth/sessions"] {
            let response = app.call(Method::GET, path, None, None).await;
            assert_unauthorized(&response, path);
            assert_eq!(response.body, json!({"detail": "Not authenticated"}));
        }
    }
);

both_backends!(
    malformed_authorization_headers_are_401,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        for header in [
            "Bearer not-a-jwt".to_owned(),
            "Bearer a.b.c".to_owned(),
            "Bearer ".to_owned(),
            "Bearer".to_owned(),
            format!("Basic {}", alice.token),
            format!("Token {}", alice.token),
            alice.token.clone(),
            format!("Bearer {}x", alice.token),
        ] {
            let response = app
                .request(Method::GET, "/api/v1/auth/me", None)
                .header("authorization", header.as_str())
                .send()
                .await
                .expect("the service should answer");
            let response = read(response).await;
            assert_unauthorized(&response, &header);
        }
    }
);

both_backends!(
    expired_foreign_unsigned_and_swapped_tokens_are_401,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let now = Utc::now().timestamp();
        let mut claims = claims_of(&alice.token);
        claims["iat"] = json!(now - 10);
        claims["exp"] = json!(now + 600);
        let control = sign(&claims, Algorithm::HS256, TEST_SECRET);
        assert_eq!(
            me(&app, &control).await.status,
            StatusCode::OK,
            "a re-signed copy of a live token works, so each refusal below has one cause"
        );

        let mut expired = claims.clone();
        expired["iat"] = json!(now - 3700);
        expired["exp"] = json!(now - 100);
        let expired = sign(&expired, Algorithm::HS256, TEST_SECRET);
        let wrong_key = sign(
            &claims,
            Algorithm::HS256,
            "another-signing-key-that-is-long-enough-9876543210",
        );
        let other_algorithm = sign(&claims, Algorithm::HS512, TEST_SECRET);
        let payload = control.split('.').nth(1).expect("a payload segment");
        // base64url of {"alg":"none","typ":"JWT"}.
        let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        let mut as_refresh = claims.clone();
        as_refresh["type"] = json!("refresh");
        let kind_swapped = sign(&as_refresh, Algorithm::HS256, TEST_SECRET);
        let mut no_session = claims.clone();
        no_session["sid"] = json!(Uuid::now_v7());
        let unknown_session = sign(&no_session, Algorithm::HS256, TEST_SECRET);
        let mut no_user = claims.clone();
        no_user["sub"] = json!(Uuid::now_v7());
        let unknown_user = sign(&no_user, Algorithm::HS256, TEST_SECRET);

        for (token, what) in [
            (expired.as_str(), "an expired token"),
            (wrong_key.as_str(), "a token signed with another key"),
            (other_algorithm.as_str(), "an HS512 token"),
            (alg_none.as_str(), "an alg:none token"),
            (kind_swapped.as_str(), "a refresh-typed token as bearer"),
            (
                alice.refresh_token.as_str(),
                "the real refresh token as bearer",
            ),
            (
                unknown_session.as_str(),
                "a token of a session that never existed",
            ),
            (
                unknown_user.as_str(),
                "a token of a user that does not exist",
            ),
        ] {
            let response = me(&app, token).await;
            assert_unauthorized(&response, what);
            assert_eq!(
                response.body,
                json!({"detail": "Could not validate credentials"}),
                "{what}"
            );
        }
    }
);
