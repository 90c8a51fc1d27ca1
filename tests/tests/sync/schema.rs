//! Documents that break the task schema over sync, as REST then sees them:
//! a task with wrongly typed fields stays listed, readable and deletable; the
//! root document never becomes a task, whatever a device writes into it.

use codeedex_schema::api::tasks::TaskView;
use reqwest::StatusCode;
use serde_json::json;

use super::*;

async fn listed_ids(app: &TestApp, token: &str) -> Vec<DocumentId> {
    let response = app.get_as(token, "/v1/tasks").await;
    assert_eq!(response.status(), 200);
    let page: serde_json::Value = response.json().await.unwrap();
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

async fn delete_task(app: &TestApp, token: &str, id: DocumentId) -> StatusCode {
    app.client
        .delete(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn patch_task(app: &TestApp, token: &str, id: DocumentId) -> StatusCode {
    app.client
        .patch(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(token)
        .json(&json!({"title": "a task now", "done": true}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn root_of(app: &TestApp, token: &str) -> DocumentId {
    let me: serde_json::Value = app.get_as(token, "/v1/me").await.json().await.unwrap();
    me["root_document_id"]
        .as_str()
        .expect("/v1/me names the root document")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_task_whose_title_a_device_made_an_integer_stays_listed_readable_and_deletable() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let created = app
        .post_json_as(
            &token,
            "/v1/tasks",
            &json!({"title": "typed", "notes": "kept", "tags": ["home"]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<TaskView>().await.unwrap().id;
    let mut device = joined(&app, "ann@example.com", "ann-a").await;
    device.request(id).await.unwrap();
    device
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();

    // A device with another idea of the schema: an integer title, a string
    // where a boolean belongs.
    device.change(id, |d| {
        d.put(ROOT, "title", 42_i64).unwrap();
        d.put(ROOT, "done", "yes").unwrap();
    });
    device.sync_to_server(id, WAIT).await.unwrap();

    assert!(
        listed_ids(&app, &token).await.contains(&id),
        "the task left the list"
    );
    let response = app.get_as(&token, &format!("/v1/tasks/{id}")).await;
    assert_eq!(response.status(), 200, "a listed task is not readable");
    let task: TaskView = response.json().await.unwrap();
    assert_eq!(task.id, id);
    assert_eq!(task.notes, "kept", "the readable fields are shown");
    assert_eq!(task.tags, ["home"]);
    assert!(!task.done, "a non-boolean done reads as absent");
    // The listed summary follows the document.
    let page: serde_json::Value = app.get_as(&token, "/v1/tasks").await.json().await.unwrap();
    let listed = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.to_string())
        .unwrap();
    assert_eq!(listed["title"], task.title, "the list shows a stale title");

    assert_eq!(delete_task(&app, &token, id).await, 204);
    assert!(!listed_ids(&app, &token).await.contains(&id));
    assert_eq!(
        app.get_as(&token, &format!("/v1/tasks/{id}"))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn a_task_a_device_uploads_with_a_map_for_a_title_is_listed_readable_and_deletable() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let mut device = joined(&app, "ann@example.com", "ann-a").await;
    let id = fresh_id();
    device.create(id, |d| {
        let title = d.put_object(ROOT, "title", ObjType::Map).unwrap();
        d.put(&title, "en", "hello").unwrap();
        let notes = d.put_object(ROOT, "notes", ObjType::Text).unwrap();
        d.splice_text(&notes, 0, 0, "from elsewhere").unwrap();
    });
    device.sync_to_server(id, WAIT).await.unwrap();

    assert!(listed_ids(&app, &token).await.contains(&id));
    let response = app.get_as(&token, &format!("/v1/tasks/{id}")).await;
    assert_eq!(response.status(), 200);
    let task: TaskView = response.json().await.unwrap();
    assert_eq!(task.notes, "from elsewhere");
    // PATCH puts a real title in place of the map.
    let response = app
        .client
        .patch(format!("{}/v1/tasks/{id}", app.address))
        .bearer_auth(&token)
        .json(&json!({"title": "fixed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<TaskView>().await.unwrap().title, "fixed");
    assert_eq!(delete_task(&app, &token, id).await, 204);
    assert!(!listed_ids(&app, &token).await.contains(&id));
}

#[tokio::test]
async fn a_root_document_with_a_title_is_still_not_a_task() {
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let root = root_of(&app, &token).await;
    let mut device = joined(&app, "ann@example.com", "ann-a").await;
    device.request(root).await.unwrap();
    device
        .sync_until(root, WAIT, |d| {
            d.get(ROOT, "tasks").ok().flatten().is_some()
        })
        .await
        .unwrap();
    device.change(root, |d| put_title(d, "not a task"));
    device.sync_to_server(root, WAIT).await.unwrap();

    assert!(
        !listed_ids(&app, &token).await.contains(&root),
        "the root document is listed as a task"
    );
    assert_eq!(
        app.get_as(&token, &format!("/v1/tasks/{root}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get_as(&token, &format!("/v1/tasks/{root}/history"))
            .await
            .status(),
        404
    );
    assert_eq!(patch_task(&app, &token, root).await, 404);
    assert_eq!(delete_task(&app, &token, root).await, 404);

    // The root is intact: new tasks go into it and are listed.
    let created = app
        .post_json_as(&token, "/v1/tasks", &json!({"title": "after"}))
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<TaskView>().await.unwrap().id;
    assert!(listed_ids(&app, &token).await.contains(&id));
    assert_eq!(root_of(&app, &token).await, root);
    device
        .sync_until(root, WAIT, |d| match d.get(ROOT, "tasks") {
            Ok(Some((Value::Object(ObjType::Map), tasks))) => {
                d.get(&tasks, id.to_string()).ok().flatten().is_some()
            }
            _ => false,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_task_whose_title_a_device_deletes_leaves_the_list_with_it() {
    // Without any title a document is not a task: the list and REST agree.
    let app = spawn_app().await;
    let token = token_of(&app, "ann@example.com").await;
    let created = app
        .post_json_as(&token, "/v1/tasks", &json!({"title": "short-lived"}))
        .await;
    let id = created.json::<TaskView>().await.unwrap().id;
    let mut device = joined(&app, "ann@example.com", "ann-a").await;
    device.request(id).await.unwrap();
    device
        .sync_until(id, WAIT, |d| read_string(d, "title").is_some())
        .await
        .unwrap();
    device.change(id, |d| d.delete(ROOT, "title").unwrap());
    device.sync_to_server(id, WAIT).await.unwrap();

    assert!(
        !listed_ids(&app, &token).await.contains(&id),
        "a document that is no task is listed"
    );
    assert_eq!(
        app.get_as(&token, &format!("/v1/tasks/{id}"))
            .await
            .status(),
        404
    );
    // A title written again makes it a listed task again.
    device.change(id, |d| put_title(d, "back"));
    device.sync_to_server(id, WAIT).await.unwrap();
    assert!(listed_ids(&app, &token).await.contains(&id));
    assert_eq!(rest_task(&app, &token, id).await.title, "back");
}
