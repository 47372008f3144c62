//! `/metrics` carries the contract's names after real traffic, and the
//! health endpoints answer.

mod common;
use common::Node;

#[test]
fn metrics_after_traffic() {
    let node = Node::start();
    let mut c = node.connect("m");
    let (_, _) = node.push_json("/v1/push/user/m", serde_json::json!(1));
    c.recv_json();
    let text = node.metrics();
    for name in [
        "corecast_node_info{",
        "corecast_node_ready 1",
        "corecast_connections_active{core=\"0\"}",
        "corecast_connections_max 1000000",
        "corecast_users_active{core=",
        "corecast_rooms_active{core=",
        "corecast_handshakes_total{outcome=\"ok\"} 1",
        "corecast_pushes_total{kind=\"user\"} 1",
        "corecast_deliveries_total{core=",
        "corecast_handoffs_total{core=",
        "corecast_disconnects_total{reason=\"slow_consumer\"} 0",
        "corecast_limit_refusals_total{limit=\"max_connections\"} 0",
        "corecast_http_requests_total{route=\"push_user\",status=\"202\"} 1",
        "corecast_push_latency_seconds_bucket{le=\"+Inf\"} 1",
        "corecast_push_latency_seconds_count 1",
        "corecast_executor_busy_seconds_total{core=\"1\"}",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
    // The process_* figures are this node's own, as /proc shows them.
    let rss = node.metric("process_resident_memory_bytes");
    let measured = common::rss_kib(node.pid()) as f64 * 1024.0;
    assert!(
        rss > 0.0 && (rss - measured).abs() < measured * 0.5,
        "process_resident_memory_bytes {rss} vs /proc {measured}"
    );
    assert!(node.metric("process_virtual_memory_bytes") >= rss);
    let fds = node.metric("process_open_fds");
    let listed = common::fd_count(node.pid()) as f64;
    assert!(
        fds >= 3.0 && (fds - listed).abs() <= 16.0 && fds <= node.metric("process_max_fds"),
        "process_open_fds {fds} vs /proc fd entries {listed}"
    );
    assert!(node.metric("process_cpu_seconds_total") >= 0.0);
    let start = node.metric("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "{start} vs {now}"
    );
    assert_eq!(node.request("GET", "/healthz").0, 200);
    assert_eq!(node.request("GET", "/readyz").0, 200);
}
