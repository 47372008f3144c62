//! Echo mode (`[ws] echo`, `CORECAST_WS_ECHO=1`), the conformance-test
//! mode: against a real node, data messages come back as one message of
//! the same type (fragmented ones whole), no token is asked for, each
//! connection is a user of its own (so `max_channels_per_user` replaces
//! none), data messages are not rate-limited, echoes stay within the send
//! queue caps (a client that does not read them is closed 1013), and a
//! node refuses to start in echo mode on a listener that is not loopback.

mod common;
use common::{Node, WAIT, masked_frame, rss_kib, wait_for};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::Message;

const ECHO: (&str, &str) = ("CORECAST_WS_ECHO", "1");

#[test]
fn data_messages_come_back_as_sent_without_a_token() {
    let node = Node::start_with(&[ECHO]);
    let mut client = node.try_connect("/ws").expect("no token needed");
    client.send_text("héllo");
    assert_eq!(client.recv_message(), Message::text("héllo"));
    client
        .ws
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .expect("send");
    assert_eq!(client.recv_message(), Message::binary(vec![0u8, 1, 2, 255]));

    // Fragmented text with a ping between the fragments and a character
    // split across them: a pong, then the whole message as one frame.
    let mut frames = masked_frame(0x01, b"fr\xc3");
    frames.extend(masked_frame(0x89, b"p"));
    frames.extend(masked_frame(0x00, b"\xa9g"));
    frames.extend(masked_frame(0x80, b"ment"));
    client.send_raw(&frames);
    let mut pong = None;
    let echoed = loop {
        match client.ws.read().expect("read") {
            Message::Pong(payload) => pong = Some(payload),
            Message::Ping(_) => continue,
            other => break other,
        }
    };
    assert_eq!(pong.as_deref(), Some(&b"p"[..]));
    assert_eq!(echoed, Message::text("frégment"));

    // A join is echoed, not acted on.
    let join = r#"{"type":"join","room":"lobby"}"#;
    client.send_text(join);
    assert_eq!(client.recv_message(), Message::text(join));
}

#[test]
fn many_messages_are_echoed_past_the_client_rate_limit() {
    // The rate limit is 20 messages a second by default and twice that
    // closes the connection; echo mode does not count data messages.
    const MESSAGES: usize = 500;
    let node = Node::start_with(&[ECHO]);
    let mut client = node.try_connect("/ws").expect("connect");
    for i in 0..MESSAGES {
        client
            .ws
            .write(Message::text(format!("m{i}")))
            .expect("write");
    }
    client.ws.flush().expect("flush");
    for i in 0..MESSAGES {
        assert_eq!(client.recv_message(), Message::text(format!("m{i}")));
    }
    assert_eq!(
        node.metric(r#"corecast_limit_refusals_total{limit="client_message_rate"}"#),
        0.0
    );
}

#[test]
fn each_connection_is_a_user_of_its_own() {
    let node = Node::start_with(&[ECHO, ("CORECAST_MAX_CHANNELS_PER_USER", "1")]);
    let mut clients: Vec<_> = (0..4)
        .map(|_| node.try_connect("/ws").expect("connect"))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_text(&format!("c{i}"));
        assert_eq!(client.recv_message(), Message::text(format!("c{i}")));
    }
    assert_eq!(node.metric_sum("corecast_users_active{"), 4.0);
    assert_eq!(
        node.metric(r#"corecast_disconnects_total{reason="replaced"}"#),
        0.0
    );
}

#[test]
fn frame_rules_still_hold_in_echo_mode() {
    let node = Node::start_with(&[ECHO]);
    // (frame, close code): an unmasked frame, a reserved bit, a close code
    // that may not be sent, text that is not UTF-8, over the message cap.
    let cases: [(Vec<u8>, u16); 5] = [
        (b"\x81\x01a".to_vec(), 1002),
        (masked_frame(0xc1, b"a"), 1002),
        (masked_frame(0x88, &1005u16.to_be_bytes()), 1002),
        (masked_frame(0x81, b"\xce\xba\xff"), 1007),
        (masked_frame(0x82, &[0; 5000]), 1009),
    ];
    for (frame, code) in cases {
        let mut client = node.try_connect("/ws").expect("connect");
        client.send_raw(&frame);
        assert_eq!(client.expect_close(), code, "frame {:02x?}", &frame[..2]);
    }
}

#[test]
fn echoes_to_a_client_that_never_reads_stay_within_the_send_queue() {
    // 60 KiB messages (the cap raised to 64 KiB for them): the kernel's
    // buffers and then the 1 MiB send queue fill, and the next echo makes
    // the client a slow consumer, closed 1013; the node's memory stays
    // within the queue cap plus slack.
    const MESSAGE_BYTES: usize = 60 * 1024;
    const SEND_BYTES_MAX: usize = 32 * 1024 * 1024;
    const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;
    let node = Node::start_with(&[ECHO, ("CORECAST_CLIENT_MESSAGE_BYTES_MAX", "65536")]);
    let rss_before = rss_kib(node.pid());
    let mut reader_less = node.connect_small_rcvbuf("ignored", 4096);
    let message = masked_frame(0x82, &vec![0x5a; MESSAGE_BYTES]);
    let writer = std::thread::spawn(move || {
        let socket = reader_less.ws.get_mut();
        socket
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (mut sent, started) = (0, Instant::now());
        while sent < SEND_BYTES_MAX && started.elapsed() < Duration::from_secs(20) {
            match socket.write_all(&message) {
                Ok(()) => sent += message.len(),
                Err(_) => break,
            }
        }
        sent
    });
    wait_for(
        "the client to be closed as a slow consumer",
        WAIT * 2,
        || node.metric(r#"corecast_disconnects_total{reason="slow_consumer"}"#) >= 1.0,
    );
    let rss_after = rss_kib(node.pid());
    let sent = writer.join().expect("writer");
    eprintln!(
        "echo to a non-reader: wrote {} KiB; node RSS {rss_before} -> {rss_after} KiB",
        sent / 1024
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn a_node_without_echo_still_asks_for_a_token() {
    let node = Node::start();
    assert_eq!(node.try_connect("/ws").err(), Some(401));
}

#[test]
fn echo_is_refused_on_a_listener_that_is_not_loopback() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .env("CORECAST_WS_ECHO", "1")
        .env("CORECAST_WS_LISTEN", "0.0.0.0:0")
        .env("CORECAST_HTTP_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corecast");
    let mut status = None;
    wait_for("the node to refuse to start", WAIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("ws.echo") && stderr.contains("loopback"),
        "stderr names the setting and the rule: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("ready"),
        "it never came up"
    );
}
