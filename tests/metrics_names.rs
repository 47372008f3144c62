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
    assert_eq!(node.request("GET", "/healthz").0, 200);
    assert_eq!(node.request("GET", "/readyz").0, 200);
}
