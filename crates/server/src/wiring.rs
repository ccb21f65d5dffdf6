//! The composition root: which service is built from which configuration
//! section and which backends. The single node (`node.rs`) is every role over
//! one embedded store and the in-process bus; a distributed process
//! (`cluster.rs`) is one role over CQL and NATS, reaching the others through
//! their gRPC clients; the test harnesses call the same functions. A role's
//! wiring is written here once.

use std::sync::Arc;
use std::time::Duration;

use natter_api::{ConversationApi, MessageApi, PresenceApi};
use natter_bus::Bus;
use natter_conversation::{ConversationOptions, ConversationService};
use natter_gateway::{Gateway, GatewayDeps, GatewayOptions, Tokens};
use natter_message::{MessageOptions, MessageService};
use natter_presence::{LeaderLease, PresenceDeps, PresenceOptions, PresenceService, SessionRegistry};
use natter_proto::v1::backend_server::BackendServer;
use natter_runtime::Tasks;
use natter_store::Stores;
use natter_types::Limits;
use tonic::service::Routes;

use crate::config::Config;
use crate::grpc::{ApiKeyCheck, BackendApi};

/// What the services run on: the embedded store and the in-process bus, or
/// the CQL store and NATS.
#[derive(Clone)]
pub struct Backends {
    pub stores: Stores,
    pub bus: Arc<dyn Bus>,
    pub sessions: Arc<dyn SessionRegistry>,
}

/// The service APIs a gateway and the backend API call: local services, or
/// gRPC clients of the roles that run them.
#[derive(Clone)]
pub struct Apis {
    pub messages: Arc<dyn MessageApi>,
    pub presence: Arc<dyn PresenceApi>,
    pub conversations: Arc<dyn ConversationApi>,
}

/// The message role: sends and groups. It has no background work.
pub fn message_service(options: MessageOptions, backends: &Backends) -> Arc<MessageService> {
    Arc::new(MessageService::new(options, backends.stores.clone(), backends.bus.clone()))
}

/// The conversation role: lists, pins, history, one-way deletes. It has no
/// background work.
pub fn conversation_service(options: ConversationOptions, backends: &Backends) -> Arc<ConversationService> {
    Arc::new(ConversationService::new(options, backends.stores.clone(), backends.bus.clone()))
}

/// The presence role; its background jobs run in `tasks` (only while it
/// holds `leader`, when given).
pub async fn presence_service(
    options: PresenceOptions,
    limits: Limits,
    backends: &Backends,
    leader: Option<LeaderLease>,
    tasks: &Tasks,
) -> anyhow::Result<Arc<PresenceService>> {
    let deps = PresenceDeps {
        registry: backends.sessions.clone(),
        store: backends.stores.presence.clone(),
        outbox: backends.stores.outbox.clone(),
        bus: backends.bus.clone(),
        leader,
    };
    PresenceService::start(options, limits, deps, tasks).await.map_err(|e| anyhow::anyhow!("starting presence: {e}"))
}

/// Every service of the single node, local, with the APIs the gateway and
/// the backend API call them through.
pub async fn local_services(
    message: MessageOptions,
    presence: PresenceOptions,
    conversations: ConversationOptions,
    backends: &Backends,
    tasks: &Tasks,
) -> anyhow::Result<(Apis, Arc<PresenceService>)> {
    let limits = message.limits.clone();
    let messages = message_service(message, backends);
    let presence = presence_service(presence, limits, backends, None, tasks).await?;
    let conversations = conversation_service(conversations, backends);
    Ok((Apis { messages, presence: presence.clone(), conversations }, presence))
}

/// The gateway role: client WebSockets, delivering each user's log from the
/// store and the bus, requests answered through `apis`.
pub fn gateway(options: GatewayOptions, backends: &Backends, apis: &Apis, tokens: Tokens, tasks: &Tasks) -> Gateway {
    let deps = GatewayDeps {
        messages: apis.messages.clone(),
        conversations: apis.conversations.clone(),
        log: backends.stores.log.clone(),
        bus: backends.bus.clone(),
        presence: apis.presence.clone(),
        tokens,
    };
    Gateway::start(options, deps, tasks)
}

/// The public backend API (`natter.v1.Backend`) behind the API key.
pub fn backend_api(apis: &Apis, tokens: Tokens, config: &Config, api_key: &str) -> Routes {
    let api = BackendApi {
        messages: apis.messages.clone(),
        presence: apis.presence.clone(),
        conversations: apis.conversations.clone(),
        tokens,
        limits: config.limits.clone(),
        backend_updates: config.conversations.backend_updates,
    };
    Routes::new(BackendServer::with_interceptor(api, ApiKeyCheck::new(api_key)))
}

/// The gateway settings of `config`, for a gateway called `gateway_id`.
pub fn gateway_options(config: &Config, gateway_id: String) -> GatewayOptions {
    GatewayOptions {
        gateway_id,
        limits: config.limits.clone(),
        ping_interval: Duration::from_secs(config.gateway.ping_interval_secs),
        idle_timeout: Duration::from_secs(config.gateway.idle_timeout_secs),
        replay_page: config.gateway.replay_page,
        read_buffer_bytes: config.gateway.read_buffer_bytes,
        write_buffer_bytes: config.gateway.write_buffer_bytes,
        // Three renewals per lease: one lost renewal does not end sessions.
        lease_renew_interval: Duration::from_millis(config.presence.lease_ms) / 3,
    }
}
