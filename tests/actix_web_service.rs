//! Drives the actix-web example (`examples/actix_web_service.rs`) over HTTP against
//! a test Mosquitto: publish through the service, then read the message back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/mosquitto.rs"]
mod mosquitto;

#[path = "../examples/actix_web_service.rs"]
mod service;

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{test, App};
use mosquitto::Mosquitto;
use serde_json::Value;

/// Upper bound for the message to show up in `GET /messages`, and for disconnecting.
const WAIT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// GETs `uri` from the test service, checks for 200 OK and returns the JSON body.
/// A macro because the service's request type lives in a crate this test does not
/// depend on.
macro_rules! get_json {
    ($app:expr, $uri:expr) => {{
        let request = test::TestRequest::get().uri($uri).to_request();
        let response = test::call_service($app, request).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {}", $uri);
        test::read_body_json::<Value, _>(response).await
    }};
}

/// Builds the example's app around `state`, as its `main` does.
macro_rules! service_app {
    ($state:expr) => {
        App::new()
            .app_data($state.clone())
            .configure(service::routes)
    };
}

#[actix_web::test]
async fn published_message_listed_by_messages() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let state = service::connect(&broker.url(), "web/#").await.unwrap();
    let app = test::init_service(service_app!(state)).await;

    let request = test::TestRequest::post()
        .uri("/publish/web/greeting?qos=1")
        .set_payload("hello from http")
        .to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = test::read_body_json(response).await;
    assert_eq!(body["topic"], "web/greeting");
    assert_eq!(body["qos"], 1);

    // The message travels to the broker and back on the subscription.
    let expected = serde_json::json!({
        "topic": "web/greeting",
        "payload": "hello from http",
        "qos": 1,
        "retain": false,
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = get_json!(&app, "/messages");
        let list = messages["messages"].as_array().unwrap();
        if !list.is_empty() {
            assert_eq!(list, &[expected], "GET /messages");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "message not listed within {WAIT:?}"
        );
        actix_rt::time::sleep(POLL_INTERVAL).await;
    }

    let health = get_json!(&app, "/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["messages_received"], 1);
    assert!(health["live_actors"].as_u64().unwrap() > 0);
    assert!(health["client"]["packets_out"].as_u64().unwrap() > 0);

    disconnect(&state.client).await;
}

#[actix_web::test]
async fn publish_rejects_invalid_requests() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let state = service::connect(&broker.url(), "web/#").await.unwrap();
    let app = test::init_service(service_app!(state)).await;

    // `%23` is `#`, which a topic name must not contain.
    for uri in [
        "/publish/web/%23",
        "/publish/web/x?qos=3",
        "/publish/web/x?retain=maybe",
        "/publish/web/x?color=blue",
    ] {
        let request = test::TestRequest::post()
            .uri(uri)
            .set_payload("x")
            .to_request();
        let response = test::call_service(&app, request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "POST {uri}");
        let body: Value = test::read_body_json(response).await;
        assert!(body["error"].is_string(), "POST {uri}: {body}");
    }

    disconnect(&state.client).await;
}

async fn disconnect(client: &mqttlink::Client) {
    tokio::time::timeout(WAIT, client.disconnect(mqttlink::Disconnect::new()))
        .await
        .expect("disconnect within the timeout")
        .expect("disconnect succeeds");
}
