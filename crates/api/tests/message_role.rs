//! `MessageApi` over real gRPC on 127.0.0.1: the local `MessageService`
//! (embedded store in a temp dir + in-process bus) served by
//! `MessageRoleServer`, called through `RemoteMessages`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_api::{MessageApi, MessageRoleServer, RemoteMessages};
use natter_bus::local::LocalBus;
use natter_message::{MessageOptions, MessageService};
use natter_proto::v1;
use natter_store::embedded::{EmbeddedOptions, EmbeddedStore};
use natter_types::NewGroup;
use natter_types::{Actor, ChatType, ErrorCode, GroupRole, Limits, MessageBody, NewMessage, UserId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(5);

fn user(name: &str) -> UserId {
    UserId::parse(name, "user").unwrap()
}

fn limits() -> Limits {
    Limits { max_group_members: 4, ..Limits::default() }
}

struct Harness {
    local: Arc<MessageService>,
    remote: RemoteMessages,
    addr: SocketAddr,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
    _storage: natter_runtime::Tasks,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn serve(listener: TcpListener, api: Arc<MessageService>, stop: CancellationToken) {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MessageRoleServer::new(api, limits()).into_service())
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop.cancelled_owned())
            .await
            .unwrap();
    });
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let storage = natter_runtime::Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
    let local = Arc::new(MessageService::new(
        MessageOptions { node_id: 1, limits: limits(), ..MessageOptions::default() },
        stores,
        Arc::new(LocalBus::new()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    serve(listener, local.clone(), stop.clone());
    let remote = RemoteMessages::connect_lazy(&format!("http://{addr}"), TIMEOUT).unwrap();
    Harness { local, remote, addr, stop, _dir: dir, _storage: storage }
}

fn text(to: &str, chat_type: ChatType, id: &str) -> NewMessage {
    NewMessage::validate(
        id.into(),
        Some(chat_type),
        to,
        Some(MessageBody::Text("hi".into())),
        BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        &Limits::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn send_and_its_idempotent_retry() {
    let h = harness().await;
    let first = h.remote.send(Actor::User(user("alice")), text("bob", ChatType::Single, "c1")).await.unwrap();
    assert_eq!(first.client_msg_id, "c1");
    assert!(first.id.0 > 0 && first.timestamp > 0 && !first.duplicate);
    let retry = h.remote.send(Actor::User(user("alice")), text("bob", ChatType::Single, "c1")).await.unwrap();
    assert_eq!((retry.id, retry.timestamp, retry.duplicate), (first.id, first.timestamp, true));
    let system = h.remote.send(Actor::System, text("bob", ChatType::Single, "c1")).await.unwrap();
    assert!(!system.duplicate, "the system is another sender");
    assert_ne!(system.id, first.id);
}

#[tokio::test]
async fn group_lifecycle() {
    let h = harness().await;
    let api: &dyn MessageApi = &h.remote;
    let (owner, a, b) = (user("owner"), user("a"), user("b"));
    let new = NewGroup { name: "team".into(), description: "d".into(), members: vec![a.clone()], max_members: 0 };
    let group = api.create_group(&owner, new).await.unwrap();
    assert_eq!((group.name.as_str(), group.member_count, group.max_members), ("team", 2, 4));
    assert_eq!(group.owner, owner);
    let owner_actor = Actor::User(owner.clone());
    assert_eq!(api.get_group(&Actor::System, &group.id).await.unwrap(), group);

    let g = api.add_members(&owner_actor, &group.id, vec![b.clone()]).await.unwrap();
    assert_eq!(g.member_count, 3);
    api.set_admin(&owner_actor, &group.id, &a, true).await.unwrap();
    let page = api.list_members(&owner_actor, &group.id, None, 2).await.unwrap();
    assert_eq!(page.members.len(), 2);
    let next = page.next.clone().expect("a second page");
    let rest = api.list_members(&owner_actor, &group.id, Some(next), 2).await.unwrap();
    assert_eq!(rest.next, None);
    let mut all: Vec<_> = page.members.iter().chain(&rest.members).map(|m| (m.user_id.clone(), m.role)).collect();
    all.sort();
    assert_eq!(all, vec![(a.clone(), GroupRole::Admin), (b.clone(), GroupRole::Member), (owner, GroupRole::Owner)]);
    assert_eq!(page, h.local.list_members(&owner_actor, &group.id, None, 2).await.unwrap(), "same as local");

    assert_eq!(api.user_groups(&b).await.unwrap(), vec![g.clone()]);
    api.leave_group(&b, &group.id).await.unwrap();
    assert!(api.user_groups(&b).await.unwrap().is_empty());
    let g = api.remove_members(&owner_actor, &group.id, vec![a.clone()]).await.unwrap();
    assert_eq!(g.member_count, 1);

    api.dissolve_group(&owner_actor, &group.id).await.unwrap();
    let err = api.get_group(&Actor::System, &group.id).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(err, h.local.get_group(&Actor::System, &group.id).await.unwrap_err(), "same error as local");
}

#[tokio::test]
async fn errors_keep_code_field_and_message() {
    let h = harness().await;
    let (owner, a, out) = (user("owner"), user("a"), user("out"));
    let group = h
        .remote
        .create_group(&owner, NewGroup { name: "g".into(), members: vec![a.clone()], ..NewGroup::default() })
        .await
        .unwrap();

    // FORBIDDEN for a non-member, exactly as the local service says it.
    let send = || text(group.id.as_str(), ChatType::Group, "x");
    let remote = h.remote.send(Actor::User(out.clone()), send()).await.unwrap_err();
    let local = h.local.send(Actor::User(out.clone()), send()).await.unwrap_err();
    assert_eq!(remote.code, ErrorCode::Forbidden);
    assert_eq!(remote, local);
    let member = Actor::User(a.clone());
    let remote = h.remote.add_members(&member, &group.id, vec![user("b")]).await.unwrap_err();
    assert_eq!(remote.code, ErrorCode::Forbidden);
    assert_eq!(remote, h.local.add_members(&member, &group.id, vec![user("b")]).await.unwrap_err());

    // Errors with a field: a limit and a validation.
    let owner_actor = Actor::User(owner.clone());
    let too_many: Vec<UserId> = (0..5).map(|i| user(&format!("u{i}"))).collect();
    let remote = h.remote.add_members(&owner_actor, &group.id, too_many.clone()).await.unwrap_err();
    let local = h.local.add_members(&owner_actor, &group.id, too_many).await.unwrap_err();
    assert_eq!(remote, local);
    let long = NewGroup { name: "n".repeat(10_000), ..NewGroup::default() };
    let remote = h.remote.create_group(&owner, long.clone()).await.unwrap_err();
    assert!(remote.field.is_some(), "{remote:?}");
    assert_eq!(remote, h.local.create_group(&owner, long).await.unwrap_err());
}

#[tokio::test]
async fn the_role_validates_wire_input() {
    let h = harness().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr)).unwrap().connect_lazy();
    let mut raw = v1::message_role_client::MessageRoleClient::new(channel);
    let req = v1::RoleSendRequest {
        from: Some(v1::Actor { kind: Some(v1::actor::Kind::UserId("alice".into())) }),
        message: Some(v1::SendMessage {
            client_msg_id: "c".into(),
            to: "bob".into(),
            chat_type: 99,
            ..Default::default()
        }),
        update_conversations: true,
    };
    let e = natter_proto::error_from_status(&raw.send(req.clone()).await.unwrap_err());
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BadRequest, Some("message.chat_type")));
    let e = natter_proto::error_from_status(&raw.send(v1::RoleSendRequest { from: None, ..req }).await.unwrap_err());
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BadRequest, Some("from")));
    let bad_group = v1::RoleGroupRequest { actor: None, group_id: "abc".into() };
    let e = natter_proto::error_from_status(&raw.get_group(bad_group).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[tokio::test]
async fn a_client_made_before_its_role_starts_connects_when_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let storage = natter_runtime::Tasks::new();
    let stores = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), &storage).unwrap().stores();
    let local = Arc::new(MessageService::new(
        MessageOptions { node_id: 1, limits: limits(), ..MessageOptions::default() },
        stores,
        Arc::new(LocalBus::new()),
    ));
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    // Nothing listens yet: the lazy client is made anyway and fails cleanly.
    let remote = RemoteMessages::connect_lazy(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
    let clone = remote.clone();
    let err = remote.user_groups(&user("a")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");

    let listener = TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    serve(listener, local, stop.clone());
    let mut ok = false;
    for _ in 0..50 {
        if clone.user_groups(&user("a")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the channel reconnects by itself");
    stop.cancel();
}

#[test]
fn an_invalid_uri_is_a_bad_request() {
    let err = RemoteMessages::connect_lazy("not a uri", TIMEOUT).err().unwrap();
    assert_eq!(err.code, ErrorCode::BadRequest);
}

/// Receipts, reader lists and recall answer across the hop as the local
/// service does, errors with their code and field.
#[tokio::test]
async fn receipts_and_recall_cross_the_hop() {
    use natter_types::{MessageId, ReaderQuery, RecallRequest, ReceiptKind, ReceiptRequest};
    let h = harness().await;
    let (owner, a) = (user("owner"), user("a"));
    let new = NewGroup { name: "acks".into(), members: vec![a.clone()], ..NewGroup::default() };
    let group = h.remote.create_group(&owner, new).await.unwrap();
    let mut asking = text(group.id.as_str(), ChatType::Group, "g1");
    asking.allow_group_ack = true;
    let sent = h.remote.send(Actor::User(owner.clone()), asking.clone()).await.unwrap();
    let e = h.remote.send(Actor::User(a.clone()), NewMessage { client_msg_id: "g2".into(), ..asking }).await;
    assert_eq!(e.unwrap_err().field.as_deref(), Some("msg_config.allow_group_ack"), "only admins ask");

    let read = ReceiptRequest {
        kind: ReceiptKind::Read,
        chat_type: ChatType::Group,
        to: group.id.to_string(),
        message_id: sent.id,
    };
    h.remote.receipt(&a, read.clone()).await.unwrap();
    let query = ReaderQuery { group: group.id.clone(), message_id: sent.id, after: None, limit: 10 };
    let page = h.remote.group_read_users(&Actor::User(owner.clone()), query.clone()).await.unwrap();
    assert_eq!(page, h.local.group_read_users(&Actor::User(owner.clone()), query.clone()).await.unwrap());
    assert_eq!((page.read_count, page.readers[0].user.clone()), (1, a.clone()));

    let missing = ReceiptRequest { message_id: MessageId(sent.id.0 + 1), ..read };
    let (remote, local) = (h.remote.receipt(&a, missing.clone()).await, h.local.receipt(&a, missing).await);
    let (remote, local) = (remote.unwrap_err(), local.unwrap_err());
    assert_eq!((remote.code, remote.field.as_deref()), (ErrorCode::NotFound, Some("id")));
    assert_eq!((remote.code, remote.field), (local.code, local.field));

    let recall =
        RecallRequest { chat_type: ChatType::Group, to: group.id.to_string(), message_id: sent.id, from: None };
    h.remote.recall(&Actor::System, recall).await.unwrap();
    let e = h.remote.group_read_users(&Actor::User(owner), query).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::NotFound, Some("msg_id")), "recalled");
}
