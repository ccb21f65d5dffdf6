//! End-to-end tests of the single-node server over real WebSockets and gRPC.
//! The scenarios live in `natter_e2e::scenarios`; `tests/distributed.rs` runs
//! the same ones, under the same names, against the distributed mode.

use natter_e2e::{TestServer, scenarios};

#[tokio::test]
async fn r1_one_to_one_live_delivery_after_ack() {
    scenarios::r1_one_to_one_live_delivery_after_ack::<TestServer>().await;
}

#[tokio::test]
async fn group_message_reaches_every_member_live() {
    scenarios::group_message_reaches_every_member_live::<TestServer>().await;
}

#[tokio::test]
async fn multi_device_sender_other_device_gets_own_message() {
    scenarios::multi_device_sender_other_device_gets_own_message::<TestServer>().await;
}

#[tokio::test]
async fn o1_offline_then_reconnect_receives_everything_in_order_once() {
    scenarios::o1_offline_then_reconnect_receives_everything_in_order_once::<TestServer>().await;
}

#[tokio::test]
async fn o1_server_restart_between_send_and_reconnect_loses_nothing() {
    scenarios::o1_server_restart_between_send_and_reconnect_loses_nothing::<TestServer>().await;
}

#[tokio::test]
async fn o1_connected_client_reconnects_and_resumes_across_a_restart() {
    scenarios::o1_connected_client_reconnects_and_resumes_across_a_restart::<TestServer>().await;
}

#[tokio::test]
async fn idempotent_retry_returns_same_id_and_is_stored_once() {
    scenarios::idempotent_retry_returns_same_id_and_is_stored_once::<TestServer>().await;
}

#[tokio::test]
async fn bad_missing_or_expired_token_gets_401_before_upgrade() {
    scenarios::bad_missing_or_expired_token_gets_401_before_upgrade::<TestServer>().await;
}

#[tokio::test]
async fn non_member_can_neither_send_nor_read_a_group() {
    scenarios::non_member_can_neither_send_nor_read_a_group::<TestServer>().await;
}

#[tokio::test]
async fn invalid_user_id_and_oversized_body_get_their_codes() {
    scenarios::invalid_user_id_and_oversized_body_get_their_codes::<TestServer>().await;
}

#[tokio::test]
async fn json_text_frames_and_oversized_or_garbled_frames_get_error_frames() {
    scenarios::json_text_frames_and_oversized_or_garbled_frames_get_error_frames::<TestServer>().await;
}

#[tokio::test]
async fn requests_past_the_rate_limit_are_answered_rate_limited() {
    scenarios::requests_past_the_rate_limit_are_answered_rate_limited::<TestServer>().await;
}

#[tokio::test]
async fn fifth_device_kicks_the_oldest_with_a_reason() {
    scenarios::fifth_device_kicks_the_oldest_with_a_reason::<TestServer>().await;
}

#[tokio::test]
async fn o1_cursor_older_than_retention_is_told_to_resync() {
    scenarios::o1_cursor_older_than_retention_is_told_to_resync::<TestServer>().await;
}

#[tokio::test]
async fn backend_grpc_sends_as_system_and_as_user_behind_the_api_key() {
    scenarios::backend_grpc_sends_as_system_and_as_user_behind_the_api_key::<TestServer>().await;
}

#[tokio::test]
async fn group_management_is_announced_to_members() {
    scenarios::group_management_is_announced_to_members::<TestServer>().await;
}
