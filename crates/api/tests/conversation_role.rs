//! `ConversationApi` over real gRPC on 127.0.0.1: the local
//! `ConversationService` (embedded store in a temp dir + in-process bus)
//! served by `ConversationRoleServer`, called through `RemoteConversations`;
//! messages are sent with the local `MessageService` on the same store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use natter_api::{ConversationApi, ConversationRoleServer, MessageApi, RemoteConversations};
use natter_bus::local::LocalBus;
use natter_conversation::{ConversationOptions, ConversationService};
use natter_message::{MessageOptions, MessageService};
use natter_proto::v1;
use natter_runtime::{Stage, Tasks};
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::{
    Actor, ChatType, ConversationId, Direction, ErrorCode, HistoryQuery, ListQuery, MessageBody, NewGroup, NewMessage,
    Removal, UserId,
};
use tokio::net::TcpListener;

fn user(name: &str) -> UserId {
    UserId::parse(name, "user").unwrap()
}

struct Harness {
    messages: Arc<MessageService>,
    local: Arc<ConversationService>,
    remote: RemoteConversations,
    addr: std::net::SocketAddr,
    _tasks: Tasks,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let tasks = Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &tasks).unwrap().stores();
    let bus = Arc::new(LocalBus::new());
    let messages = Arc::new(MessageService::new(MessageOptions::default(), stores.clone(), bus.clone()));
    let local = Arc::new(ConversationService::new(ConversationOptions::default(), stores, bus));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ConversationRoleServer::new(local.clone()).into_service();
    tasks.spawn(Stage::Ingress, "grpc", |stop| async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop.cancelled_owned())
            .await?;
        Ok(())
    });
    let remote = RemoteConversations::connect_lazy(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
    Harness { messages, local, remote, addr, _tasks: tasks, _dir: dir }
}

async fn send(h: &Harness, from: &str, to: &str, chat_type: ChatType, text: &str) {
    let new = NewMessage::validate(
        format!("{from}-{text}"),
        Some(chat_type),
        to,
        Some(MessageBody::Text(text.into())),
        Default::default(),
        &Default::default(),
    )
    .unwrap();
    h.messages.send(Actor::User(user(from)), new).await.unwrap();
}

fn first_page() -> ListQuery {
    ListQuery { pinned: false, page_size: 20, cursor: String::new() }
}

#[tokio::test]
async fn answers_cross_the_hop_as_the_local_service_gives_them() {
    let h = harness().await;
    send(&h, "ann", "bob", ChatType::Single, "one").await;
    send(&h, "ann", "bob", ChatType::Single, "two").await;
    let (bob, ann) = (user("bob"), ConversationId::single(&user("ann")));
    let remote: &dyn ConversationApi = &h.remote;

    let page = remote.conversations(&bob, first_page()).await.unwrap();
    let local = h.local.conversations(&bob, first_page()).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(
        (page.conversations[0].unread, &page.conversations[0].last_message),
        (local.conversations[0].unread, &local.conversations[0].last_message)
    );
    assert_eq!(page.conversations[0].unread, 2);

    let query = HistoryQuery { cursor: None, page_size: 1, direction: Direction::Down };
    let history = remote.history(&bob, &ann, query).await.unwrap();
    assert_eq!(history, h.local.history(&bob, &ann, query).await.unwrap());
    assert!(history.cursor.is_some(), "one more page");

    remote.pin(&bob, &ann, true).await.unwrap();
    let pinned = remote.conversations(&bob, ListQuery { pinned: true, ..first_page() }).await.unwrap();
    assert!(pinned.conversations[0].pinned_at > 0);
    remote.mark_read(&bob, &ann).await.unwrap();
    remote.remove_messages(&bob, &ann, Removal::Before(natter_types::now_ms())).await.unwrap();
    assert!(remote.history(&bob, &ann, query).await.unwrap().messages.is_empty());
    remote.delete_conversation(&bob, &ann, true).await.unwrap();
    assert!(remote.conversations(&bob, first_page()).await.unwrap().conversations.is_empty());
}

#[tokio::test]
async fn errors_cross_the_hop_unchanged() {
    let h = harness().await;
    let group = h
        .messages
        .create_group(
            &user("ann"),
            NewGroup { name: "g".into(), description: String::new(), members: vec![], max_members: 0 },
        )
        .await
        .unwrap();
    let outsider = user("cy");
    let conversation = ConversationId::group(&group.id);
    let query = HistoryQuery { cursor: None, page_size: 20, direction: Direction::Up };
    let remote = h.remote.history(&outsider, &conversation, query).await.unwrap_err();
    let local = h.local.history(&outsider, &conversation, query).await.unwrap_err();
    assert_eq!((remote.code, &remote.message), (ErrorCode::Forbidden, &local.message));
    let remote = h.remote.pin(&outsider, &ConversationId::single(&user("zed")), true).await.unwrap_err();
    assert_eq!(remote.code, ErrorCode::NotFound);
}

/// What a role receives is validated again: a page size out of range and a
/// malformed cursor are named.
#[tokio::test]
async fn the_role_validates_wire_input() {
    let h = harness().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr)).unwrap().connect_lazy();
    let mut raw = v1::conversation_role_client::ConversationRoleClient::new(channel);
    let list = v1::RoleConversationsRequest { user_id: "bob".into(), page_size: 51, ..Default::default() };
    let e = natter_proto::error_from_status(&raw.conversations(list).await.unwrap_err());
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BadRequest, Some("page_size")));
    let query = v1::GetHistoryMessages {
        target_id: "ann".into(),
        chat_type: v1::ChatType::Single as i32,
        cursor: "abc".into(),
        ..Default::default()
    };
    let history = v1::RoleHistoryRequest { user_id: "bob".into(), query: Some(query) };
    let e = natter_proto::error_from_status(&raw.history(history).await.unwrap_err());
    assert_eq!(e.field.as_deref(), Some("cursor"));
    let e = natter_proto::error_from_status(
        &raw.history(v1::RoleHistoryRequest { user_id: "Not Valid".into(), query: None }).await.unwrap_err(),
    );
    assert_eq!(e.field.as_deref(), Some("user_id"));
}
