//! The browser client (`GET /corecast.js`) in headless Chromium against a
//! real node, through a TCP proxy the test controls (issue 12): pushes
//! arrive; a 2 s outage while 10 pushes are posted (to the user, to a
//! room the page joined, one binary) is ridden out with every push seen exactly once,
//! in order (the resume protocol of issue 11: `since` and `rooms`); after
//! `DELETE /v1/users/{uid}/connections` the page says `closed` and never
//! connects again; the tab evicted by an 11th (4001) does not come back to
//! evict another; an expiring token is replaced through the token function
//! after 4003.

mod browser;
mod common;

use browser::{PageServer, Proxy, test_page};
use common::{Node, WAIT, wait_for};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long the proxy cuts the page off (the issue's 2 s).
const OUTAGE: Duration = Duration::from_secs(2);

/// Pushes posted during the outage.
const PUSHES_IN_OUTAGE: usize = 10;

/// The one of them posted as `application/octet-stream` (its one byte is n).
const BINARY_PUSH: usize = 5;

/// How long a page told to stop is watched for a new connection.
const STAYS_CLOSED: Duration = Duration::from_secs(5);

/// Backoff options of the test clients: the outage is retried several
/// times, and the reconnect after it comes within a second.
const BACKOFF: &str = "backoffBaseMs: 100, backoffCapMs: 1000";

/// Creates client `name` on `tab` for `url` with `token` (a JS expression)
/// and `track`s it as `window[name + "_t"]`, then connects it.
fn start_client(
    browser: &mut browser::Browser,
    tab: &browser::Tab,
    name: &str,
    url: &str,
    token: &str,
) {
    browser.eval(
        tab,
        &format!(
            r#"window.{name} = new Corecast("{url}", {{ token: {token}, {BACKOFF} }});
               window.{name}_t = track(window.{name}); window.{name}.connect(); true"#
        ),
    );
}

/// Opens the test page (module from `node`) and waits until it imported it.
fn open_page(browser: &mut browser::Browser, page: &PageServer) -> browser::Tab {
    let tab = browser.open(&format!("http://{}/", page.addr));
    browser.wait_true(
        &tab,
        "the test page imported /corecast.js",
        WAIT,
        "window.ready === true",
    );
    tab
}

/// Waits until `uid` has `want` connections on `node`.
fn wait_channels(node: &Node, uid: &str, want: usize) {
    wait_for(&format!("{want} connection(s) of {uid}"), WAIT, || {
        node.request("GET", &format!("/v1/users/{uid}")).1["channels"]
            .as_array()
            .is_some_and(|c| c.len() == want)
    });
}

#[test]
fn a_page_rides_out_an_outage_exactly_once_and_stops_when_disconnected() {
    let Some(mut browser) = browser::launch() else {
        return;
    };
    // free_join: the page joins a room its token does not name, which only
    // `rooms=` on the reconnect brings back before the replay.
    let node = Node::start_with(&[("CORECAST_WS_FREE_JOIN", "1")]);
    let proxy = Proxy::start(node.ws);
    let page = PageServer::start(test_page(node.ws));
    let tab = open_page(&mut browser, &page);
    let token = node.token("page", None);
    let url = format!("ws://{}/ws", proxy.addr);
    start_client(&mut browser, &tab, "c", &url, &format!("\"{token}\""));
    browser.wait_true(&tab, "the page connects", WAIT, r#"c.state === "open""#);
    wait_channels(&node, "page", 1);

    // Pushes arrive: the first to the room once the page is in it (a push
    // while it is not yet reaches nobody, and is never replayed to it: it
    // precedes the page's first position).
    browser.eval(&tab, r#"c.join("news"); true"#);
    wait_for("the page's join", WAIT, || {
        let (status, answer) = node.push_json("/v1/push/room/news", json!(0));
        assert_eq!(status, 202, "{answer}");
        answer["local_recipients"] == 1
    });
    browser.wait_true(&tab, "the first push", WAIT, "c_t.pushes.length === 1");

    // The proxy cuts the page off for 2 s while 10 pushes are posted.
    proxy.refuse(true);
    let cut = Instant::now();
    proxy.drop_all();
    let gap = OUTAGE / (PUSHES_IN_OUTAGE as u32 + 1);
    for n in 1..=PUSHES_IN_OUTAGE {
        std::thread::sleep(gap);
        let to = if n % 2 == 0 { "room/news" } else { "user/page" };
        let path = format!("/v1/push/{to}");
        let (status, _) = if n == BINARY_PUSH {
            node.post(&path, "application/octet-stream", &[n as u8])
        } else {
            node.push_json(&path, json!(n))
        };
        assert_eq!(status, 202, "push {n} during the outage");
    }
    std::thread::sleep(OUTAGE.saturating_sub(cut.elapsed()));
    let attempts_in_outage = proxy.attempts();
    proxy.refuse(false);
    assert_eq!(
        browser.eval(&tab, r#"c_t.states.some((s) => s.s === "connecting")"#),
        json!(true),
        "the page noticed the cut"
    );

    // It comes back on its own, and sees every push once, in order.
    browser.wait_true_showing(
        &tab,
        "every push of the outage after the reconnect (the resume protocol)",
        Duration::from_secs(15),
        &format!(
            "c.state === \"open\" && c_t.pushes.length >= {}",
            PUSHES_IN_OUTAGE + 1
        ),
        "JSON.stringify({ pushes: c_t.pushes, resumed: c_t.resumed, states: c_t.states })",
    );
    std::thread::sleep(Duration::from_millis(500)); // room for a duplicate to show
    let pushes = browser.eval(&tab, "c_t.pushes");
    let want: Vec<_> = (0..=PUSHES_IN_OUTAGE)
        .map(|n| match n {
            BINARY_PUSH => json!(format!("bin:{n}")),
            n => json!(n),
        })
        .collect();
    assert_eq!(pushes, json!(want), "every push exactly once, in order");
    let ids = browser.eval(&tab, "c_t.ids");
    assert!(
        ids.as_array().unwrap().iter().all(|id| id.is_string()),
        "every push has its id (a binary one from its header frame): {ids}"
    );
    let resumed = browser.eval(&tab, "c_t.resumed.at(-1)");
    assert_eq!(resumed["recovered"], json!(true), "{resumed}");
    assert!(
        proxy.attempts() > attempts_in_outage.max(1),
        "reconnected through the proxy ({} attempts)",
        proxy.attempts()
    );
    eprintln!(
        "outage: {} connection attempts in {OUTAGE:?}, last resumed {resumed}",
        attempts_in_outage - 1
    );

    // The server disconnects the user: closed for good.
    let (status, answer) = node.request("DELETE", "/v1/users/page/connections");
    assert_eq!(status, 202, "{answer}");
    browser.wait_true(&tab, "closed after 4002", WAIT, r#"c.state === "closed""#);
    assert_eq!(
        browser.eval(&tab, "c_t.states.at(-1)"),
        json!({ "s": "closed", "code": 4002 })
    );
    let attempts = proxy.attempts();
    std::thread::sleep(STAYS_CLOSED);
    assert_eq!(proxy.attempts(), attempts, "a connection after 4002");
    assert_eq!(browser.eval(&tab, "c.state"), json!("closed"));
}

#[test]
fn the_tab_an_eleventh_evicts_does_not_come_back() {
    let Some(mut browser) = browser::launch() else {
        return;
    };
    let node = Node::start();
    let proxy = Proxy::start(node.ws);
    let page = PageServer::start(test_page(node.ws));
    let token = format!("\"{}\"", node.token("tabs", None));
    let url = format!("ws://{}/ws", proxy.addr);
    // max_channels_per_user = 10 (the default): ten tabs, each open before
    // the next, so the first is the oldest.
    let mut tabs = Vec::new();
    for n in 0..10 {
        let tab = open_page(&mut browser, &page);
        start_client(&mut browser, &tab, "c", &url, &token);
        browser.wait_true(
            &tab,
            &format!("tab {n} connects"),
            WAIT,
            r#"c.state === "open""#,
        );
        wait_channels(&node, "tabs", n + 1);
        tabs.push(tab);
    }
    let eleventh = open_page(&mut browser, &page);
    start_client(&mut browser, &eleventh, "c", &url, &token);
    browser.wait_true(
        &eleventh,
        "the 11th tab connects",
        WAIT,
        r#"c.state === "open""#,
    );
    browser.wait_true(
        &tabs[0],
        "the oldest tab is replaced",
        WAIT,
        r#"c.state === "closed""#,
    );
    assert_eq!(
        browser.eval(&tabs[0], "c_t.states.at(-1)"),
        json!({ "s": "closed", "code": 4001 })
    );
    let attempts = proxy.attempts();
    std::thread::sleep(STAYS_CLOSED);
    assert_eq!(proxy.attempts(), attempts, "a connection after 4001");
    for (n, tab) in tabs.iter().enumerate().skip(1).chain([(10, &eleventh)]) {
        assert_eq!(browser.eval(tab, "c.state"), json!("open"), "tab {n}");
    }
    assert_eq!(browser.eval(&tabs[0], "c.state"), json!("closed"));
    wait_channels(&node, "tabs", 10);
}

#[test]
fn an_expired_token_is_replaced_through_the_token_function() {
    let Some(mut browser) = browser::launch() else {
        return;
    };
    // Expiry is checked at every heartbeat tick: the shortest (1 s).
    let node = Node::start_with(&[("CORECAST_HEARTBEAT_PING_INTERVAL_MS", "1000")]);
    let page = PageServer::start(test_page(node.ws));
    let tab = open_page(&mut browser, &page);
    let keys = corecast::auth::TokenKeys::new(common::SECRET.as_bytes());
    let short = keys.mint("expiring", None, None, Duration::from_secs(2));
    let long = keys.mint("expiring", None, None, Duration::from_secs(600));
    browser.eval(
        &tab,
        &format!(
            r#"window.calls = 0;
               window.tokenFn = async () => (++window.calls === 1 ? "{short}" : "{long}"); true"#
        ),
    );
    let url = format!("ws://{}/ws", node.ws);
    start_client(&mut browser, &tab, "c", &url, "tokenFn");
    browser.wait_true(
        &tab,
        "open with the short token",
        WAIT,
        r#"c.state === "open""#,
    );
    browser.wait_true(
        &tab,
        "4003, then open again with a token from the function",
        Duration::from_secs(15),
        r#"c_t.states.some((s) => s.code === 4003) && c.state === "open" && calls === 2"#,
    );
    wait_channels(&node, "expiring", 1);
    let (status, _) = node.push_json("/v1/push/user/expiring", json!("after"));
    assert_eq!(status, 202);
    browser.wait_true(
        &tab,
        "a push on the new token",
        WAIT,
        r#"c_t.pushes.includes("after")"#,
    );
    let states = browser.eval(&tab, "c_t.states.map((s) => s.s)");
    assert!(
        !states.as_array().unwrap().contains(&json!("closed")),
        "never closed for good: {states}"
    );
    assert_eq!(browser.eval(&tab, "calls"), json!(2));
}
