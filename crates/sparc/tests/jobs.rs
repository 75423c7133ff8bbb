//! Runs reach agents, black-box on both backends: a fired run is a job that only an agent with
//! its skill gets, exactly once however many poll at once (on one instance or two, through the
//! read model or the JetStream work queue), that a long poll waits for, and whose claim the
//! owner sees on the WebSocket; a run not finished in time becomes `timeout`; deleting a task cancels its
//! waiting job; and the task fields that govern runs are validated and kept.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::memory_server::eventually;
use crate::support::{
    Backend, NATS_URL, TestApp, TestUser, assert_422_at, both_backends, delete_nats_stream, id_of,
    nats_namespace,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sparc_domain::user::Role;

async fn agent(app: &TestApp, writer: &TestUser, name: &str, capabilities: Value) -> String {
    let created = app
        .post(
            "/api/v1/agents",
            &writer.token,
            json!({"name": name, "type": "custom", "capabilities": capabilities}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    id_of(&created.body)
}

async fn task(app: &TestApp, owner: &TestUser, body: Value) -> Value {
    let created = app.post("/api/v1/tasks", &owner.token, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    created.body
}

/// Runs `task` now; the execution's id.
async fn run_now(app: &TestApp, owner: &TestUser, task: &str) -> String {
    let run = app
        .post(
            &format!("/api/v1/tasks/{task}/run"),
            &owner.token,
            json!({}),
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    id_of(&run.body)
}

async fn jobs(app: &TestApp, agent_user: &TestUser, agent: &str, query: &str) -> Vec<Value> {
    let answer = app
        .get(
            &format!("/api/v1/agents/{agent}/jobs?{query}"),
            &agent_user.token,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["jobs"].as_array().expect("a job list").clone()
}

async fn execution(app: &TestApp, owner: &TestUser, task: &str, id: &str) -> Value {
    let list = app
        .get(&format!("/api/v1/tasks/{task}/executions"), &owner.token)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    list.body["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

both_backends!(
    a_run_goes_to_one_agent_with_its_skill,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let runner = app.user_with_role("runner", Role::Agent).await;
        let linter = agent(&app, &runner, "linter", json!(["lint"])).await;
        let builder = agent(&app, &runner, "builder", json!(["build", "deploy"])).await;
        let created = task(
            &app,
            &owner,
            json!({"skill_name": "build", "schedule_cron": "0 9 * * *",
               "params": {"target": "release"}, "timeout_seconds": 120}),
        )
        .await;
        let task_id = id_of(&created);
        let (mut socket, _) = app.ws(&owner.token, None).await;
        let run = run_now(&app, &owner, &task_id).await;

        assert!(
            jobs(&app, &runner, &linter, "wait=0").await.is_empty(),
            "an agent without the skill gets nothing"
        );
        let taken = jobs(&app, &runner, &builder, "wait=0&limit=5").await;
        assert_eq!(taken.len(), 1, "{taken:?}");
        let job = &taken[0];
        assert_eq!(job["execution_id"], run.as_str());
        assert_eq!(job["task_id"], task_id.as_str());
        assert_eq!(job["skill_name"], "build");
        assert_eq!(job["params"], json!({"target": "release"}));
        assert_eq!(job["timeout_seconds"], 120);
        assert_eq!(job["attempt"], 1);
        assert!(
            jobs(&app, &runner, &builder, "wait=0").await.is_empty(),
            "a claimed job is not handed out again"
        );

        // The claim shows on the owner's WebSocket, the execution, the task and the agent.
        let (mut claimed_run, mut assigned_task) = (false, false);
        while !(claimed_run && assigned_task) {
            let frame = socket.change().await;
            let payload = &frame["payload"];
            claimed_run |= frame["type"] == "execution_update"
                && payload["execution"]["id"] == run.as_str()
                && payload["execution"]["agent_id"] == builder.as_str();
            assigned_task |= frame["type"] == "task_status_update"
                && payload["taskId"] == task_id.as_str()
                && payload["assignee"] == builder.as_str();
        }
        assert_eq!(
            execution(&app, &owner, &task_id, &run).await["agent_id"],
            builder.as_str()
        );
        let detail = app
            .get(&format!("/api/v1/tasks/{task_id}"), &owner.token)
            .await;
        assert_eq!(detail.body["assignee"], builder.as_str(), "{}", detail.body);
        let agent_detail = app
            .get(&format!("/api/v1/agents/{builder}"), &runner.token)
            .await;
        assert_eq!(agent_detail.body["status"], "busy");

        // The agent reports as before; the run ends on the task.
        let reported = app
            .post(
                "/api/v1/agents/activity",
                &runner.token,
                json!({"agent_id": builder, "task_id": task_id, "execution_id": run,
                   "status": "success", "output": "built"}),
            )
            .await;
        assert_eq!(reported.status, StatusCode::CREATED, "{}", reported.body);
        let finished = execution(&app, &owner, &task_id, &run).await;
        assert_eq!(finished["status"], "success");
        assert_eq!(finished["output_text"], "built");
    }
);

both_backends!(
    an_agent_with_any_capability_takes_every_skill,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let runner = app.user_with_role("runner", Role::Agent).await;
        let anything = agent(&app, &runner, "anything", json!(["*"])).await;
        for skill in ["a", "b", "c"] {
            let created = task(
                &app,
                &owner,
                json!({"skill_name": skill, "schedule_cron": "0 9 * * *"}),
            )
            .await;
            run_now(&app, &owner, &id_of(&created)).await;
        }
        let taken = jobs(&app, &runner, &anything, "limit=10").await;
        let skills: BTreeSet<&str> = taken
            .iter()
            .filter_map(|job| job["skill_name"].as_str())
            .collect();
        assert_eq!(skills, BTreeSet::from(["a", "b", "c"]));
    }
);

/// Agents on `instances` poll at once, again and again, for 12 runs; every run is handed out,
/// and to one agent only.
async fn many_pollers_take_each_run_once(instances: &[&TestApp]) {
    let app = instances[0];
    let owner = app.user("owner").await;
    let runner = app.user_with_role("runner", Role::Agent).await;
    let mut agents = Vec::new();
    for n in 0..6 {
        agents.push(agent(app, &runner, &format!("agent-{n}"), json!(["work"])).await);
    }
    let mut runs = BTreeSet::new();
    for _ in 0..12 {
        let created = task(
            app,
            &owner,
            json!({"skill_name": "work", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        runs.insert(run_now(app, &owner, &id_of(&created)).await);
    }
    let handed_out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let polls = agents.iter().enumerate().map(|(n, agent)| {
        let instance = instances[n % instances.len()];
        let (runner, handed_out, wanted) = (runner.clone(), handed_out.clone(), runs.len());
        async move {
            while handed_out.lock().expect("lock").len() < wanted
                && tokio::time::Instant::now() < until
            {
                for job in jobs(instance, &runner, agent, "wait=1&limit=2").await {
                    let id = job["execution_id"].as_str().expect("an id").to_owned();
                    handed_out.lock().expect("lock").push(id);
                }
            }
        }
    });
    futures::future::join_all(polls).await;
    let handed_out = handed_out.lock().expect("lock").clone();
    let distinct: BTreeSet<String> = handed_out.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        handed_out.len(),
        "a run was handed to two agents: {handed_out:?}"
    );
    assert_eq!(distinct, runs, "every run is handed out");
}

both_backends!(
    agents_polling_at_once_take_each_run_once,
    |app: TestApp| async move {
        many_pollers_take_each_run_once(&[&app]).await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_polling_two_instances_take_each_run_once() {
    let Some(first) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let second = first.spawn_beside().await;
    many_pollers_take_each_run_once(&[&first, &second]).await;
}

both_backends!(
    a_long_poll_answers_when_a_run_arrives,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let runner = app.user_with_role("runner", Role::Agent).await;
        let worker = agent(&app, &runner, "waiter", json!(["late"])).await;
        let created = task(
            &app,
            &owner,
            json!({"skill_name": "late", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        let started = tokio::time::Instant::now();
        let poll = {
            let app_base = app.base.clone();
            let token = runner.token.clone();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .get(format!("{app_base}/api/v1/agents/{worker}/jobs?wait=20"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("the poll")
                    .json::<Value>()
                    .await
                    .expect("a job list")
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let run = run_now(&app, &owner, &id_of(&created)).await;
        let answer = poll.await.expect("the poll task");
        assert_eq!(answer["jobs"][0]["execution_id"], run.as_str(), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the poll answered when the run arrived, not at the end of its wait"
        );
    }
);

both_backends!(
    the_job_endpoint_refuses_what_it_cannot_serve,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let runner = app.user_with_role("runner", Role::Agent).await;
        let worker = agent(&app, &runner, "gone", json!(["*"])).await;
        for query in ["wait=31", "wait=-1", "limit=0", "limit=51"] {
            let answer = app
                .get(
                    &format!("/api/v1/agents/{worker}/jobs?{query}"),
                    &runner.token,
                )
                .await;
            let field = query.split('=').next().expect("a name");
            assert_422_at(&answer, json!(["query", field]));
        }
        let user_poll = app
            .get(&format!("/api/v1/agents/{worker}/jobs"), &owner.token)
            .await;
        assert_eq!(
            user_poll.status,
            StatusCode::FORBIDDEN,
            "{}",
            user_poll.body
        );
        let unknown = app
            .get(
                &format!("/api/v1/agents/{}/jobs", uuid::Uuid::now_v7()),
                &runner.token,
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        // An offline agent gets no jobs, though one waits.
        let created = task(
            &app,
            &owner,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        run_now(&app, &owner, &id_of(&created)).await;
        let offline = app
            .put(
                &format!("/api/v1/agents/{worker}"),
                &runner.token,
                json!({"status": "offline"}),
            )
            .await;
        assert_eq!(offline.status, StatusCode::OK, "{}", offline.body);
        assert!(jobs(&app, &runner, &worker, "wait=0").await.is_empty());
    }
);

both_backends!(
    runs_not_finished_in_time_time_out,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let runner = app.user_with_role("runner", Role::Agent).await;
        let slow = agent(&app, &runner, "slow", json!(["slow"])).await;
        let claimed_task = id_of(
            &task(
                &app,
                &owner,
                json!({"skill_name": "slow", "schedule_cron": "0 9 * * *", "timeout_seconds": 1}),
            )
            .await,
        );
        let unclaimed_task = id_of(
            &task(
                &app,
                &owner,
                json!({"skill_name": "nobody", "schedule_cron": "0 9 * * *", "timeout_seconds": 1}),
            )
            .await,
        );
        let claimed = run_now(&app, &owner, &claimed_task).await;
        let unclaimed = run_now(&app, &owner, &unclaimed_task).await;
        assert_eq!(jobs(&app, &runner, &slow, "wait=0").await.len(), 1);

        for (task_id, run, error) in [
            (&claimed_task, &claimed, "not finished within 1 s"),
            (
                &unclaimed_task,
                &unclaimed,
                "no agent took the run within 1 s",
            ),
        ] {
            let timed_out = eventually(Duration::from_secs(15), || async {
                execution(&app, &owner, task_id, run).await["status"] == "timeout"
            })
            .await;
            assert!(timed_out, "run {run} should have timed out");
            assert_eq!(
                execution(&app, &owner, task_id, run).await["error_text"],
                error
            );
            // The task is free to run again, with the time-out counted.
            let settled = eventually(Duration::from_secs(10), || async {
                let detail = app
                    .get(&format!("/api/v1/tasks/{task_id}"), &owner.token)
                    .await;
                detail.body["status"] == "pending" && detail.body["error_count"] == 1
            })
            .await;
            assert!(settled, "task {task_id} should be pending again");
        }
        let agent_detail = app
            .get(&format!("/api/v1/agents/{slow}"), &runner.token)
            .await;
        assert_eq!(
            agent_detail.body["status"], "error",
            "{}",
            agent_detail.body
        );
    }
);

both_backends!(
    deleting_a_task_cancels_its_waiting_job,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let runner = app.user_with_role("runner", Role::Agent).await;
        let worker = agent(&app, &runner, "idle", json!(["s"])).await;
        let task_id = id_of(
            &task(
                &app,
                &owner,
                json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
            )
            .await,
        );
        let run = run_now(&app, &owner, &task_id).await;
        let deleted = app
            .delete(&format!("/api/v1/tasks/{task_id}"), &owner.token)
            .await;
        assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
        let cancelled = eventually(Duration::from_secs(10), || async {
            execution(&app, &owner, &task_id, &run).await["status"] == "cancelled"
        })
        .await;
        assert!(cancelled, "the waiting run should be cancelled");
        assert!(jobs(&app, &runner, &worker, "wait=0").await.is_empty());
        let detail = app
            .get(&format!("/api/v1/tasks/{task_id}"), &owner.token)
            .await;
        assert_eq!(detail.body["status"], "deleted", "{}", detail.body);
    }
);

both_backends!(
    run_fields_are_validated_kept_and_changed,
    |app: TestApp| async move {
        let owner = app.user("owner").await;
        let defaults = task(
            &app,
            &owner,
            json!({"skill_name": "s", "schedule_cron": "0 9 * * *"}),
        )
        .await;
        assert_eq!(defaults["timeout_seconds"], 3600);
        assert_eq!(defaults["overlap"], "skip");
        assert_eq!(defaults["catch_up"], "once");
        for (field, value) in [
            ("timeout_seconds", json!(0)),
            ("timeout_seconds", json!(86401)),
            ("timeout_seconds", json!("60")),
            ("overlap", json!("sometimes")),
            ("catch_up", json!("all")),
        ] {
            let mut body = json!({"skill_name": "s", "schedule_cron": "0 9 * * *"});
            body[field] = value.clone();
            let refused = app.post("/api/v1/tasks", &owner.token, body).await;
            assert_422_at(&refused, json!(["body", field]));
        }
        let id = id_of(&defaults);
        let changed = app
            .put(
                &format!("/api/v1/tasks/{id}"),
                &owner.token,
                json!({"timeout_seconds": 86400, "overlap": "allow", "catch_up": "none"}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        assert_eq!(changed.body["timeout_seconds"], 86400);
        assert_eq!(changed.body["overlap"], "allow");
        assert_eq!(changed.body["catch_up"], "none");
        // Under `allow`, a second run by hand starts beside the first.
        run_now(&app, &owner, &id).await;
        run_now(&app, &owner, &id).await;
    }
);

/// With NATS, runs travel through the JetStream work queue: two instances, each of whose
/// agents fetch from it, hand every run out once, and the queue is empty afterwards with every
/// run it carried acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_travel_through_the_jetstream_work_queue() {
    let Some(namespace) = nats_namespace(NATS_URL).await else {
        return;
    };
    let configured = namespace.clone();
    let with_nats = move |settings: &mut sparc::config::Settings| {
        settings.nats_url = Some(NATS_URL.to_owned());
        settings.nats_namespace = configured;
    };
    let Some(first) = TestApp::spawn_with(Backend::Postgres, with_nats.clone()).await else {
        return;
    };
    let second = first.spawn_beside_with(with_nats).await;
    many_pollers_take_each_run_once(&[&first, &second]).await;

    let subjects = sparc_bus::Subjects::new(namespace.clone());
    let bus = sparc_bus::NatsBus::connect(NATS_URL, subjects)
        .await
        .expect("NATS");
    let stream_name = format!("{}_JOBS", namespace.to_uppercase());
    let mut stream = bus
        .jetstream()
        .get_stream(&stream_name)
        .await
        .expect("the job stream exists");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.last_sequence, 12, "each run was queued once");
    assert_eq!(info.state.messages, 0, "and taken off the queue");
    let _ = bus.jetstream().delete_stream(&stream_name).await;
    delete_nats_stream(NATS_URL, &namespace).await;
}
