//! A terminal chat: prints what arrives and sends each line typed on stdin.
//!
//! ```text
//! cargo run -p natter-client --example chat -- --url ws://127.0.0.1:8080 --token "$JWT" --to bob
//! ```
//!
//! `--group` sends to a group id instead of a user; `--cursor N` resumes after
//! event N (the cursor is printed on exit). `RUST_LOG=natter_client=debug`
//! shows the SDK's connection handling on stderr.

use std::process::ExitCode;

use clap::Parser;
use natter_client::{Client, ClientEvent, ClientOptions, v1};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Parser)]
#[command(about = "Chat over a Natter server from the terminal")]
struct Args {
    /// Server base URL.
    #[arg(long, env = "NATTER_URL", default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// JWT for the user to chat as.
    #[arg(long, env = "NATTER_TOKEN")]
    token: String,
    /// Recipient: a user id, or a group id with --group.
    #[arg(long)]
    to: String,
    /// Send to the group `--to` instead of a user.
    #[arg(long)]
    group: bool,
    /// Resume after this event seq instead of the last acknowledged one.
    #[arg(long)]
    cursor: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let options = ClientOptions { cursor: args.cursor, ..ClientOptions::new(args.url, args.token) };
    let (client, mut events) = match Client::connect(options).await {
        Ok(connected) => connected,
        Err(e) => {
            eprintln!("connect failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let chat_type = if args.group { v1::ChatType::Group } else { v1::ChatType::Single };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();

    // Created once: a Ctrl-C between two turns of the loop is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);

    let code = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => match client.send_text(&args.to, chat_type, line).await {
                    Ok(sent) => println!("  (sent #{}{})", sent.server_msg_id, if sent.duplicate { ", duplicate" } else { "" }),
                    Err(e) => eprintln!("send failed: {e}"),
                },
                // End of input: leave.
                Ok(None) => break ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stdin: {e}");
                    break ExitCode::FAILURE;
                }
            },
            event = events.recv() => match event {
                Some(event) => show(&event),
                None => break ExitCode::FAILURE,
            },
            // Leave cleanly, so the server has the final acknowledgement.
            _ = &mut interrupted => break ExitCode::SUCCESS,
        }
    };
    client.close().await;
    eprintln!("cursor {}", client.cursor());
    code
}

fn show(event: &ClientEvent) {
    match event {
        ClientEvent::OnTextMessage(m) | ClientEvent::OnCustomMessage(m) => {
            let body = match &m.body {
                Some(v1::message::Body::Text(t)) => t.text.clone(),
                Some(v1::message::Body::Custom(c)) => format!("<{}> {:?}", c.event, c.params),
                None => "<empty>".to_owned(),
            };
            let place = if m.chat_type == v1::ChatType::Group as i32 { format!(" @ {}", m.to) } else { String::new() };
            println!("{}{place}: {body}", m.from);
        }
        ClientEvent::OnGroupChange(g) => {
            let kind = v1::GroupChangeKind::try_from(g.kind).map(|k| k.as_str_name()).unwrap_or("CHANGED");
            println!("* group {} {kind} by {}: {}", g.group_id, g.operator, g.members.join(", "));
        }
        ClientEvent::OnMultiDeviceEvent(e) => {
            let operation =
                v1::MultiDeviceOperation::try_from(e.operation).map(|o| o.as_str_name()).unwrap_or("CHANGED");
            println!("* conversation {} {operation} on one of my devices", e.conversation_id);
        }
        ClientEvent::OnChannelMessage(a) => println!("* {} read the conversation with {}", a.from, a.to),
        ClientEvent::OnDeliveredMessage(r) => println!("* message {} reached {}", r.mid, r.from),
        ClientEvent::OnReadMessage(r) if r.group_read_count > 0 => {
            println!("* message {} read by {} members of {}", r.mid, r.group_read_count, r.to);
        }
        ClientEvent::OnReadMessage(r) => println!("* {} read message {}", r.from, r.mid),
        ClientEvent::OnStatisticMessage(r) => {
            println!("* while away: message {} read by {} members of {}", r.mid, r.group_read_count, r.to);
        }
        ClientEvent::OnRecallMessage(r) => println!("* {} recalled message {}", r.by, r.mid),
        ClientEvent::OnPresenceStatusChange(p) => {
            let state = if p.online { "online" } else { "offline" };
            println!("* {} is {state} {}", p.user_id, p.description);
        }
        ClientEvent::Connected(h) => {
            eprintln!("* connected as {} (session {}, head {})", h.user_id, h.session_id, h.head)
        }
        ClientEvent::CaughtUp(seq) => eprintln!("* caught up at {seq}"),
        ClientEvent::ResyncRequired(r) => {
            eprintln!("* events {}..{} are gone from the server; continuing after {}", r.requested, r.oldest, r.head);
        }
        ClientEvent::Disconnected { reason } => eprintln!("* disconnected: {reason}"),
        ClientEvent::Kicked(g) => eprintln!("* session ended by the server: {}", g.message),
    }
}
