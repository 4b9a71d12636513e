//! Whether the client has session state that a broker may resume, and the session
//! settings of each connection attempt that follow from it. A client without session
//! state must close the connection when CONNACK reports Session Present 1 (MQTT 5.0
//! [MQTT-3.2.2-4]); this client applies the rule under 3.1.1 too.

use crate::codec::Properties;
use crate::error::{ClientError, DisconnectCause};
use crate::session::{ProtocolViolation, SessionConfig};

use super::{ClientActor, Group};

/// Whether this client has session state that a broker may resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LocalSession {
    /// No session state: a CONNACK with Session Present 1 closes the connection.
    Absent,
    /// State of a session that outlived its connection, or one the application chose to
    /// adopt from the broker.
    Held,
    /// A broker reported a session this client does not have. The next attempt starts
    /// clean, so the broker discards it, rather than failing the same way again.
    Discard,
}

impl ClientActor {
    /// Returns the session settings of the next attempt. It resumes the session after
    /// an accepted connection when `resume_on_reconnect` is set, and starts clean after
    /// a broker reported a session this client does not have.
    pub(super) fn attempt_session_config(&self) -> SessionConfig {
        let mut session_config = self.config.session.clone();
        let resume = self.connected_before
            && self
                .reconnect
                .as_ref()
                .is_some_and(|reconnect| reconnect.resume_on_reconnect);
        if resume {
            session_config.clean_start = false;
        }
        if self.local_session == LocalSession::Discard {
            session_config.clean_start = true;
        }
        session_config.has_session_state = self.local_session == LocalSession::Held;
        session_config
    }

    /// Marks the current connection accepted by CONNACK and records whether its session
    /// outlives it: under v5 when the Session Expiry Interval is above 0 (the broker's,
    /// if CONNACK sets one), and before v5 with clean session 0.
    pub(super) fn record_accepted_connection(&mut self, properties: &Properties) {
        let Group::Up {
            clean_start,
            accepted,
            ..
        } = &mut self.group
        else {
            return;
        };
        *accepted = true;
        let outlives = if self.config.session.protocol.is_v5() {
            properties
                .session_expiry_interval
                .unwrap_or(self.config.session.effective_limits().session_expiry)
                > 0
        } else {
            !*clean_start
        };
        self.local_session = if outlives {
            LocalSession::Held
        } else {
            LocalSession::Absent
        };
    }

    /// Makes the next attempt start clean when the connection ended because the broker
    /// reported a session this client does not have, so that it cannot end the same way
    /// again.
    pub(super) fn record_unknown_session(&mut self, cause: &DisconnectCause) {
        if let DisconnectCause::Failed(ClientError::ProtocolViolation(
            ProtocolViolation::SessionPresentWithoutSessionState,
        )) = cause
        {
            self.local_session = LocalSession::Discard;
        }
    }
}
