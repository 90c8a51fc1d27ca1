//! The handle's offline task operations, on a real local store.

use std::time::Duration;

use codeedex_schema::api::tasks::UpdateTask;
use codeedex_schema::id::DocumentId;

use super::*;
use crate::config::TokenStorage;
use crate::events::{AuthStatus, ChangeOrigin, ClientEvent};
use crate::tasks::{NewTask, StatusFilter, TaskFilter};

fn open(dir: &std::path::Path) -> Client {
    let mut config = ClientConfig::new(dir, "http://127.0.0.1:9");
    config.token_storage = TokenStorage::File;
    Client::open(config).unwrap()
}

#[test]
fn tasks_are_created_listed_changed_completed_reopened_and_deleted_offline() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(dir.path());
    let mut events = client.subscribe();
    let milk = client
        .create_task(&NewTask {
            tags: vec!["home".into()],
            priority: Some("high".into()),
            ..NewTask::titled("buy milk")
        })
        .unwrap();
    let taxes = client.create_task(&NewTask::titled("file taxes")).unwrap();
    assert!(matches!(
        events.try_next(),
        Some(ClientEvent::TaskAdded {
            origin: ChangeOrigin::Local,
            ..
        })
    ));
    assert_eq!(client.list_tasks(&TaskFilter::default()).len(), 2);
    let home = TaskFilter {
        tag: Some("home".into()),
        ..TaskFilter::default()
    };
    assert_eq!(
        client
            .list_tasks(&home)
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        [milk.id]
    );

    let update = UpdateTask {
        title: Some("buy oat milk".into()),
        due: Some(chrono::NaiveDate::from_ymd_opt(2026, 12, 1)),
        ..Default::default()
    };
    let changed = client.update_task(milk.id, &update).unwrap();
    assert_eq!(changed.title, "buy oat milk");
    assert_eq!(changed.priority, "high", "untouched fields stay");

    let done = client.complete_task(taxes.id).unwrap();
    assert!(done.done && done.completed_at.is_some());
    assert_eq!(client.list_tasks(&TaskFilter::default()).len(), 1);
    let done_filter = TaskFilter {
        status: StatusFilter::Done,
        ..TaskFilter::default()
    };
    assert_eq!(client.list_tasks(&done_filter).len(), 1);
    assert!(!client.reopen_task(taxes.id).unwrap().done);

    client.delete_task(taxes.id).unwrap();
    assert!(matches!(
        client.task(taxes.id),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.complete_task(taxes.id),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.create_task(&NewTask::titled(" ")),
        Err(ClientError::InvalidTask(_))
    ));
    assert!(matches!(
        client.update_task(
            milk.id,
            &UpdateTask {
                priority: Some("urgent".into()),
                ..Default::default()
            }
        ),
        Err(ClientError::InvalidTask(_))
    ));
}

#[test]
fn tasks_survive_a_restart_with_the_same_actor() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let client = open(dir.path());
        let id = client
            .create_task(&NewTask::titled("persist me"))
            .unwrap()
            .id;
        client.complete_task(id).unwrap();
        id
    };
    let client = open(dir.path());
    let task = client.task(id).unwrap();
    assert_eq!(task.title, "persist me");
    assert!(task.done);
    let status = client.status();
    assert_eq!(
        (status.tasks, status.open_tasks, status.logged_in),
        (1, 0, false)
    );
    assert_eq!(status.unsynced_documents, 1, "never synced");
    assert!(matches!(client.auth_status(), AuthStatus::LoggedOut));
}

#[test]
fn ids_resolve_from_unique_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(dir.path());
    let ids: Vec<DocumentId> = (0..40)
        .map(|i| {
            client
                .create_task(&NewTask::titled(&format!("t{i}")))
                .unwrap()
                .id
        })
        .collect();
    let id = ids[7];
    let text = id.to_string();
    assert_eq!(client.resolve_task_id(&text).unwrap(), id);
    assert_eq!(
        client
            .resolve_task_id(&format!("automerge:{text}"))
            .unwrap(),
        id
    );
    // The shortest prefix that is unique resolves; a one-character prefix
    // shared by several tasks is ambiguous.
    let unique = (1..=text.len())
        .map(|n| &text[..n])
        .find(|p| ids.iter().filter(|i| i.to_string().starts_with(p)).count() == 1)
        .unwrap();
    assert_eq!(client.resolve_task_id(unique).unwrap(), id);
    let first = text[..1].to_owned();
    if ids
        .iter()
        .filter(|i| i.to_string().starts_with(&first))
        .count()
        > 1
    {
        assert!(matches!(
            client.resolve_task_id(&first),
            Err(ClientError::AmbiguousId { .. })
        ));
    }
    assert!(matches!(
        client.resolve_task_id("0OIl"),
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.resolve_task_id(""),
        Err(ClientError::InvalidInput(_))
    ));
}

#[tokio::test]
async fn sync_without_an_account_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(dir.path());
    assert!(matches!(
        client.sync_once(Duration::from_secs(1)).await,
        Err(ClientError::NotLoggedIn)
    ));
    assert!(matches!(
        client.sessions().await,
        Err(ClientError::NotLoggedIn)
    ));
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_offline() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(dir.path());
    let err = client
        .request_code(&SignInIdentifier::Email("a@example.com".into()))
        .await
        .unwrap_err();
    assert!(err.is_offline(), "{err:?}");
}
