//! An actix-web service with an embedded mqttlink client.
//!
//! - `POST /publish/{topic}?qos=1&retain=true` publishes the request body and
//!   responds once the broker acknowledged it at that QoS (default QoS 0).
//! - `GET /messages` returns the messages received so far on the subscribed filter,
//!   oldest first, at most [`MAX_STORED_MESSAGES`].
//! - `GET /health` returns the client's counters.
//!
//! ```text
//! MQTT_URL=mqtt://127.0.0.1:1883 cargo run --example actix_web_service
//! curl -X POST --data hello 'http://127.0.0.1:8080/publish/mqttlink/web/greeting?qos=1'
//! curl http://127.0.0.1:8080/messages
//! ```
//!
//! Settings come from the environment: `MQTT_URL` (default `mqtt://127.0.0.1:1883`),
//! `MQTT_FILTER` (default `mqttlink/web/#`) and `BIND` (default `127.0.0.1:8080`).
//!
//! `tests/actix_web_service.rs` includes this file as a module and serves
//! [`routes`] with the state from [`connect`].

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use mqttlink::codec::{PubAckReason, QoS, SubscriptionOptions, TopicFilter, TopicName};
use mqttlink::{Client, ClientError, ClientOptions, Message, Publish, Subscribe};
use serde_json::json;

/// Number of received messages `GET /messages` keeps; older ones are dropped.
pub const MAX_STORED_MESSAGES: usize = 1000;

/// Upper bound for a publish acknowledgement or a SUBACK.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by all HTTP workers: the client handle and the message log.
#[derive(Debug, Clone)]
pub struct AppState {
    /// MQTT client used to publish.
    pub client: Client,
    /// Actor storing received messages.
    pub log: Addr<MessageLog>,
}

/// Starts a client on `url`, subscribes the message log to `filter` at QoS 1, and
/// returns the state for [`routes`].
pub async fn connect(url: &str, filter: &str) -> Result<web::Data<AppState>, String> {
    let filter: TopicFilter = filter
        .parse()
        .map_err(|error| format!("invalid MQTT_FILTER {filter:?}: {error}"))?;
    let client = ClientOptions::from_url(url)
        .and_then(|options| options.client_id("mqttlink-web").start())
        .map_err(|error| format!("failed to start the MQTT client for {url}: {error}"))?;

    let log = MessageLog::default().start();
    let subscribe = Subscribe::new(log.clone().recipient()).filter(
        filter.clone(),
        SubscriptionOptions::with_qos(QoS::AtLeastOnce),
    );
    match tokio::time::timeout(BROKER_TIMEOUT, client.subscribe(subscribe)).await {
        Ok(Ok(outcome)) if outcome.reasons.iter().all(|reason| reason.is_success()) => {}
        Ok(Ok(outcome)) => {
            return Err(format!(
                "broker rejected the subscription to {filter}: {:?}",
                outcome.reasons
            ))
        }
        Ok(Err(error)) => return Err(format!("failed to subscribe to {filter}: {error}")),
        Err(_) => return Err(format!("no SUBACK for {filter} within {BROKER_TIMEOUT:?}")),
    }
    Ok(web::Data::new(AppState { client, log }))
}

/// Registers the service's routes; the app must also hold the [`AppState`] from
/// [`connect`] as app data.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/publish/{topic:.*}", web::post().to(publish))
        .route("/messages", web::get().to(messages))
        .route("/health", web::get().to(health));
}

async fn publish(
    state: web::Data<AppState>,
    request: HttpRequest,
    topic: web::Path<String>,
    body: Bytes,
) -> HttpResponse {
    let topic: TopicName = match topic.parse() {
        Ok(topic) => topic,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let (qos, retain) = match parse_publish_query(request.query_string()) {
        Ok(parsed) => parsed,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };

    let publish = Publish::new(topic.clone(), body).qos(qos).retain(retain);
    match tokio::time::timeout(BROKER_TIMEOUT, state.client.publish(publish)).await {
        Ok(Ok(outcome)) => HttpResponse::Ok().json(json!({
            "topic": topic.as_str(),
            "qos": qos.level(),
            "reason_code": outcome.reason.map(PubAckReason::code),
        })),
        Ok(Err(error)) => {
            tracing::warn!(%topic, %error, "publish failed");
            error_response(publish_error_status(&error), &error.to_string())
        }
        Err(_) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("no acknowledgement within {BROKER_TIMEOUT:?}"),
        ),
    }
}

/// Parses `qos` (0, 1 or 2; default 0) and `retain` (true or false; default false).
fn parse_publish_query(query: &str) -> Result<(QoS, bool), String> {
    let mut qos = QoS::AtMostOnce;
    let mut retain = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "qos" => {
                qos = value
                    .parse::<u8>()
                    .ok()
                    .and_then(|level| QoS::try_from(level).ok())
                    .ok_or_else(|| format!("invalid qos {value:?}, expected 0, 1 or 2"))?;
            }
            "retain" => {
                retain = value
                    .parse()
                    .map_err(|_| format!("invalid retain {value:?}, expected true or false"))?;
            }
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok((qos, retain))
}

fn publish_error_status(error: &ClientError) -> StatusCode {
    match error {
        ClientError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn messages(state: web::Data<AppState>) -> HttpResponse {
    match state.log.send(ListMessages).await {
        Ok(stored) => HttpResponse::Ok().json(json!({ "messages": stored })),
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    let received = state.log.send(CountMessages).await.unwrap_or_default();
    match state.client.stats().await {
        Ok(counters) => HttpResponse::Ok().json(json!({
            "status": "ok",
            "live_actors": mqttlink::live_actor_count(),
            "messages_received": received,
            "client": {
                "inflight_out": counters.inflight_out,
                "inflight_in": counters.inflight_in,
                "queued_requests": counters.queued_requests,
                "bytes_in": counters.bytes_in,
                "bytes_out": counters.bytes_out,
                "packets_in": counters.packets_in,
                "packets_out": counters.packets_out,
            },
        })),
        Err(error) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "error": error.to_string(),
        })),
    }
}

fn error_response(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// Keeps the last [`MAX_STORED_MESSAGES`] messages received on the subscription.
#[derive(Debug, Default)]
pub struct MessageLog {
    messages: VecDeque<serde_json::Value>,
    received: u64,
}

impl Actor for MessageLog {
    type Context = Context<Self>;
}

impl Handler<Message> for MessageLog {
    type Result = ();

    fn handle(&mut self, message: Message, _: &mut Context<Self>) {
        if self.messages.len() == MAX_STORED_MESSAGES {
            self.messages.pop_front();
        }
        // Payloads that are not UTF-8 are shown with U+FFFD in place of invalid bytes.
        self.messages.push_back(json!({
            "topic": message.topic.as_str(),
            "payload": String::from_utf8_lossy(&message.payload),
            "qos": message.qos.level(),
            "retain": message.retain,
        }));
        self.received += 1;
    }
}

/// Requests the stored messages as JSON values, oldest first.
#[derive(Debug, actix::Message)]
#[rtype(result = "Vec<serde_json::Value>")]
pub struct ListMessages;

impl Handler<ListMessages> for MessageLog {
    type Result = Vec<serde_json::Value>;

    fn handle(&mut self, _: ListMessages, _: &mut Context<Self>) -> Self::Result {
        self.messages.iter().cloned().collect()
    }
}

/// Requests the number of messages received since the start, dropped ones included.
#[derive(Debug, actix::Message)]
#[rtype(result = "u64")]
pub struct CountMessages;

impl Handler<CountMessages> for MessageLog {
    type Result = u64;

    fn handle(&mut self, _: CountMessages, _: &mut Context<Self>) -> u64 {
        self.received
    }
}

#[allow(dead_code)]
#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let url = std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned());
    let filter = std::env::var("MQTT_FILTER").unwrap_or_else(|_| "mqttlink/web/#".to_owned());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let state = connect(&url, &filter)
        .await
        .map_err(std::io::Error::other)?;

    tracing::info!(%url, %filter, %bind, "serving");
    let client = state.client.clone();
    actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .configure(routes)
    })
    .bind(&bind)?
    .run()
    .await?;

    // The server stopped (for example on Ctrl-C): leave the broker with DISCONNECT,
    // so it does not publish a will or keep the connection until keep-alive expires.
    let disconnect = client.disconnect(mqttlink::Disconnect::new());
    match tokio::time::timeout(BROKER_TIMEOUT, disconnect).await {
        Ok(Ok(())) => tracing::info!("disconnected"),
        Ok(Err(error)) => tracing::warn!(%error, "disconnect failed"),
        Err(_) => tracing::warn!("disconnect timed out"),
    }
    Ok(())
}
