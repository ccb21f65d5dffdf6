//! R1 / O1 across a real crash: the `natter` binary is killed with SIGKILL
#![allow(clippy::unwrap_used)]
//! right after acknowledging messages; after a restart on the same data dir
//! every acknowledged message is delivered, in order, exactly once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use natter_client::{Client, ClientEvent, ClientOptions, v1};

struct Server {
    child: Child,
    ws: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "crash-test-secret-0123456789";

fn start(dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("serve")
        .env("NATTER_AUTH__TOKEN_SECRET", SECRET)
        .env("NATTER_LOG__FILTER", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("natter starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let ws = loop {
        let line = lines.next().expect("natter logs its address before exiting").expect("read log");
        if let Some(rest) = line.split("ws=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, ws: format!("ws://{ws}") }
}

fn token(dir: &std::path::Path, user: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("--data-dir")
        .arg(dir)
        .args(["token", "--user", user])
        .env("NATTER_AUTH__TOKEN_SECRET", SECRET)
        .output()
        .expect("natter token runs");
    assert!(out.status.success(), "natter token failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

#[tokio::test]
async fn r1_acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let options =
        |ws: &str, user: &str| ClientOptions { reconnect: false, ..ClientOptions::new(ws, token(dir.path(), user)) };
    let (alice, _alice_events) = Client::connect(options(&server.ws, "alice")).await.expect("alice connects");
    let mut acked = Vec::new();
    for i in 0..50 {
        let ack = alice.send_text("bob", v1::ChatType::Single, format!("m{i}")).await.expect("ack");
        acked.push(ack.server_msg_id);
    }
    // SIGKILL: no shutdown path runs, only what was durable survives.
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reaped");
    drop(alice);

    let server = start(dir.path());
    let (_bob, mut events) = Client::connect(options(&server.ws, "bob")).await.expect("bob connects");
    let mut got = Vec::new();
    loop {
        match events.recv_timeout(Duration::from_secs(10)).await.expect("events after restart") {
            ClientEvent::OnTextMessage(m) => got.push(m.id),
            ClientEvent::CaughtUp(_) => break,
            ClientEvent::Connected(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, acked, "every acknowledged message, in order, once");
}
