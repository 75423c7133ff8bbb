//! Accounts as an admin manages them (`/api/v1/admin/users`), black-box on both backends: the
//! list and its filters, a role change and a deactivation (each ending the account's sessions),
//! and every way a change is refused.

use crate::support::{TestApp, assert_422_at, both_backends};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc_domain::user::Role;

const USERS: &str = "/api/v1/admin/users";

fn user_path(id: &str) -> String {
    format!("{USERS}/{id}")
}

fn usernames(page: &Value) -> Vec<&str> {
    page["users"]
        .as_array()
        .expect("a users array")
        .iter()
        .map(|user| user["username"].as_str().expect("a username"))
        .collect()
}

both_backends!(
    a_role_change_ends_the_users_sessions_and_the_next_login_carries_the_new_role,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;
        assert_eq!(
            app.get("/api/v1/audit/verify", &alice.token).await.status,
            StatusCode::FORBIDDEN,
            "a user may not verify the log"
        );

        let changed = app
            .put(
                &user_path(&alice.id),
                &admin.token,
                json!({"role": "auditor"}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        assert_eq!(changed.body["role"], "auditor");
        assert_eq!(changed.body["username"], "alice");
        assert!(changed.body.get("password_hash").is_none());

        let stale = app.get("/api/v1/auth/me", &alice.token).await;
        assert_eq!(
            stale.status,
            StatusCode::UNAUTHORIZED,
            "a token naming the old role stops working"
        );
        let again = app.login("alice").await;
        let me = app.get("/api/v1/auth/me", &again.token).await;
        assert_eq!(me.body["role"], "auditor");
        assert_eq!(
            app.get("/api/v1/audit/verify", &again.token).await.status,
            StatusCode::OK,
            "the new token carries the auditor role"
        );
    }
);

both_backends!(
    a_deactivated_user_cannot_sign_in_until_activated_again,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;

        let deactivated = app
            .put(
                &user_path(&alice.id),
                &admin.token,
                json!({"is_active": false}),
            )
            .await;
        assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
        assert_eq!(deactivated.body["is_active"], false);
        assert_eq!(
            app.get("/api/v1/auth/me", &alice.token).await.status,
            StatusCode::UNAUTHORIZED,
            "the sessions of a deactivated account end"
        );
        let refused = app
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "alice", "password": alice.password})),
            )
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.body["detail"], "User account is inactive");

        let activated = app
            .put(
                &user_path(&alice.id),
                &admin.token,
                json!({"is_active": true}),
            )
            .await;
        assert_eq!(activated.status, StatusCode::OK, "{}", activated.body);
        assert_eq!(activated.body["is_active"], true);
        let back = app.login("alice").await;
        assert_eq!(
            app.get("/api/v1/auth/me", &back.token).await.status,
            StatusCode::OK
        );
    }
);

both_backends!(
    only_an_admin_lists_or_changes_accounts,
    |app: TestApp| async move {
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let auditor = app.user_with_role("audrey", Role::Auditor).await;
        for (who, token) in [("a user", &alice.token), ("an auditor", &auditor.token)] {
            assert_eq!(
                app.get(USERS, token).await.status,
                StatusCode::FORBIDDEN,
                "{who} lists accounts"
            );
            assert_eq!(
                app.put(&user_path(&bob.id), token, json!({"role": "admin"}))
                    .await
                    .status,
                StatusCode::FORBIDDEN,
                "{who} changes a role"
            );
        }
        let me = app.get("/api/v1/auth/me", &bob.token).await;
        assert_eq!(me.body["role"], "user", "bob was not promoted");
    }
);

both_backends!(
    the_account_list_filters_by_role_and_activity_and_pages_by_username,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        app.user_with_role("audrey", Role::Auditor).await;
        let carol = app.user("carol").await;
        app.user("bob").await;
        let deactivated = app
            .put(
                &user_path(&carol.id),
                &admin.token,
                json!({"is_active": false}),
            )
            .await;
        assert_eq!(deactivated.status, StatusCode::OK);

        let all = app.get(USERS, &admin.token).await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.body);
        assert_eq!(usernames(&all.body), ["audrey", "bob", "carol", "root"]);
        assert_eq!(all.body["total"], 4);
        assert_eq!(all.body["has_more"], false);

        let auditors = app
            .get(&format!("{USERS}?role=auditor"), &admin.token)
            .await;
        assert_eq!(usernames(&auditors.body), ["audrey"]);
        let inactive = app
            .get(&format!("{USERS}?is_active=false"), &admin.token)
            .await;
        assert_eq!(usernames(&inactive.body), ["carol"]);
        let second = app
            .get(&format!("{USERS}?limit=1&offset=1"), &admin.token)
            .await;
        assert_eq!(usernames(&second.body), ["bob"]);
        assert_eq!(second.body["total"], 4);
        assert_eq!(second.body["has_more"], true);

        assert_422_at(
            &app.get(&format!("{USERS}?role=owner"), &admin.token).await,
            json!(["query", "role"]),
        );
        assert_422_at(
            &app.get(&format!("{USERS}?limit=0"), &admin.token).await,
            json!(["query", "limit"]),
        );
    }
);

both_backends!(
    a_change_that_cannot_be_made_is_refused_with_its_reason,
    |app: TestApp| async move {
        let admin = app.user_with_role("root", Role::Admin).await;
        let alice = app.user("alice").await;

        let empty = app
            .put(&user_path(&alice.id), &admin.token, json!({}))
            .await;
        assert_eq!(empty.status, StatusCode::BAD_REQUEST);
        assert_eq!(empty.body["detail"], "No fields to update");

        assert_422_at(
            &app.put(&user_path(&alice.id), &admin.token, json!({"role": "root"}))
                .await,
            json!(["body", "role"]),
        );
        let unknown_field = app
            .put(
                &user_path(&alice.id),
                &admin.token,
                json!({"password": "x"}),
            )
            .await;
        assert_eq!(unknown_field.status, StatusCode::UNPROCESSABLE_ENTITY);

        let nobody = app
            .put(
                &user_path(&uuid::Uuid::now_v7().to_string()),
                &admin.token,
                json!({"role": "auditor"}),
            )
            .await;
        assert_eq!(nobody.status, StatusCode::NOT_FOUND);
        assert_eq!(nobody.body["detail"], "User not found");

        let own = app
            .put(&user_path(&admin.id), &admin.token, json!({"role": "user"}))
            .await;
        assert_eq!(own.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            app.get("/api/v1/auth/me", &admin.token).await.body["role"],
            "admin",
            "the admin's own role is unchanged"
        );
    }
);
