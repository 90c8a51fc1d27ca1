//! `/v1/tasks` over REST: another user's task is indistinguishable from a
//! missing one and cannot be changed, and the list's filters and paging.

use codeedex_schema::api::tasks::{TaskHistory, TaskPage, TaskView};
use codeedex_schema::id::DocumentId;
use codeedex_tests::app::{TestApp, spawn_app};
use serde_json::{Value, json};

/// Signs `email` in and returns its access token.
async fn token_of(app: &TestApp, email: &str) -> String {
    app.sign_in_email(email).await.tokens.access_token
}

async fn create(app: &TestApp, token: &str, body: Value) -> TaskView {
    let response = app.post_json_as(token, "/v1/tasks", &body).await;
    assert_eq!(response.status(), 201, "creating {body}");
    response.json().await.expect("a task view")
}

async fn patch(app: &TestApp, token: &str, id: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("the server answers")
}

async fn delete(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client
        .delete(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("the server answers")
}

/// Status and body of a response, for comparing two answers as a whole.
async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn page(app: &TestApp, token: &str, query: &str) -> TaskPage {
    let response = app.get_as(token, &format!("/v1/tasks?{query}")).await;
    assert_eq!(response.status(), 200, "GET /v1/tasks?{query}");
    response.json().await.expect("a task page")
}

/// The titles a query lists, sorted.
async fn titles(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let mut titles: Vec<String> = page(app, token, query)
        .await
        .tasks
        .into_iter()
        .map(|t| t.title)
        .collect();
    titles.sort();
    titles
}

#[tokio::test]
async fn another_users_task_answers_like_a_missing_one_and_is_left_unchanged() {
    let app = spawn_app().await;
    let ann = token_of(&app, "ann@example.com").await;
    let bob = token_of(&app, "bob@example.com").await;
    let task = create(
        &app,
        &ann,
        json!({"title": "ann's task", "notes": "private", "tags": ["work"]}),
    )
    .await;
    let changed = patch(
        &app,
        &ann,
        &task.id.to_string(),
        &json!({"priority": "high"}),
    )
    .await;
    assert_eq!(changed.status(), 200);
    let before: TaskView = app
        .get_as(&ann, &format!("/v1/tasks/{}", task.id))
        .await
        .json()
        .await
        .unwrap();
    let history_before: TaskHistory = app
        .get_as(&ann, &format!("/v1/tasks/{}/history", task.id))
        .await
        .json()
        .await
        .unwrap();
    // Bob has a task of his own, so his root document exists too.
    create(&app, &bob, json!({"title": "bob's task"})).await;

    let theirs = task.id.to_string();
    let missing = DocumentId::from_random_bytes([7; 16]).to_string();
    let body = json!({"title": "bob was here", "done": true});
    for (what, of_theirs, of_missing) in [
        (
            "PATCH",
            answer(patch(&app, &bob, &theirs, &body).await).await,
            answer(patch(&app, &bob, &missing, &body).await).await,
        ),
        (
            "DELETE",
            answer(delete(&app, &bob, &theirs).await).await,
            answer(delete(&app, &bob, &missing).await).await,
        ),
        (
            "GET history",
            answer(
                app.get_as(&bob, &format!("/v1/tasks/{theirs}/history"))
                    .await,
            )
            .await,
            answer(
                app.get_as(&bob, &format!("/v1/tasks/{missing}/history"))
                    .await,
            )
            .await,
        ),
    ] {
        assert_eq!(
            of_theirs.0, 404,
            "{what} of another user's task: {of_theirs:?}"
        );
        assert_eq!(
            of_theirs, of_missing,
            "{what}: another user's task answers differently from a missing one"
        );
    }

    // The owner sees the task exactly as before, with no new history, and
    // still listed.
    let after = app.get_as(&ann, &format!("/v1/tasks/{}", task.id)).await;
    assert_eq!(after.status(), 200);
    let after: TaskView = after.json().await.unwrap();
    assert_eq!(after, before);
    let history_after: TaskHistory = app
        .get_as(&ann, &format!("/v1/tasks/{}/history", task.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history_after, history_before);
    let listed = page(&app, &ann, "").await;
    assert_eq!(listed.tasks, vec![before]);
    // And Bob's list does not show it.
    assert_eq!(titles(&app, &bob, "").await, ["bob's task"]);
}

#[tokio::test]
async fn each_list_filter_keeps_exactly_the_matching_tasks() {
    let app = spawn_app().await;
    let token = token_of(&app, "filters@example.com").await;
    let a = create(
        &app,
        &token,
        json!({"title": "a", "due": "2026-01-10", "tags": ["work"]}),
    )
    .await;
    create(
        &app,
        &token,
        json!({"title": "b", "due": "2026-02-01", "tags": ["home"]}),
    )
    .await;
    create(
        &app,
        &token,
        json!({"title": "c", "tags": ["work", "home"]}),
    )
    .await;
    let done = patch(&app, &token, &a.id.to_string(), &json!({"done": true})).await;
    assert_eq!(done.status(), 200);

    for (query, expected) in [
        ("", &["a", "b", "c"][..]),
        ("done=true", &["a"]),
        ("done=false", &["b", "c"]),
        // Both date bounds are inclusive; tasks without a due day never match.
        ("due_before=2026-01-10", &["a"]),
        ("due_before=2026-01-09", &[]),
        ("due_after=2026-01-10", &["a", "b"]),
        ("due_after=2026-01-11", &["b"]),
        ("due_after=2026-01-01&due_before=2026-12-31", &["a", "b"]),
        ("tag=work", &["a", "c"]),
        ("tag=home", &["b", "c"]),
        ("tag=nowhere", &[]),
        ("tag=home&done=false&due_after=2026-01-01", &["b"]),
    ] {
        assert_eq!(titles(&app, &token, query).await, expected, "?{query}");
    }
}

#[tokio::test]
async fn the_list_pages_through_every_task_once_in_id_order() {
    let app = spawn_app().await;
    let token = token_of(&app, "pages@example.com").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            create(&app, &token, json!({"title": format!("task {n}")}))
                .await
                .id,
        );
    }
    ids.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let page = page(&app, &token, &query).await;
        sizes.push(page.tasks.len());
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "next is the page's last id");
                query = format!("limit=2&after={next}");
            }
            None => break,
        }
        assert!(sizes.len() < 10, "paging does not end: {sizes:?}");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen, ids, "every task once, ordered by id");

    // A page that ends exactly at the last task has no next.
    let whole = page(&app, &token, "limit=5").await;
    assert_eq!(whole.tasks.len(), 5);
    assert_eq!(whole.next, None);
    let last = page(&app, &token, &format!("limit=1&after={}", ids[3])).await;
    assert_eq!(
        last.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        [ids[4]]
    );
    assert_eq!(last.next, None);
    // After the last id, nothing.
    let beyond = page(&app, &token, &format!("after={}", ids[4])).await;
    assert!(beyond.tasks.is_empty() && beyond.next.is_none());
    // The default page holds them all.
    assert_eq!(page(&app, &token, "").await.tasks.len(), 5);
    // The largest page size is accepted.
    assert_eq!(page(&app, &token, "limit=500").await.tasks.len(), 5);
}

#[tokio::test]
async fn a_bad_list_parameter_is_refused_with_400() {
    let app = spawn_app().await;
    let token = token_of(&app, "bad-query@example.com").await;
    create(&app, &token, json!({"title": "one"})).await;
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "done=maybe",
        "due_before=2026-13-01",
        "due_after=tomorrow",
        "tag=Not%20A%20Tag",
        "after=not-a-document-id",
        "colour=blue",
    ] {
        let response = app.get_as(&token, &format!("/v1/tasks?{query}")).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 400, "?{query} answered {status}: {body}");
    }
}
