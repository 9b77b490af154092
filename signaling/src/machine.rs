//! The call state machine: plain code, no I/O. It takes a device's parsed
//! message (with what the I/O layer looked up about the callee) or the
//! passing of time, and returns the answer to the sender and the events to
//! send to other devices. The server is authoritative: only the two devices
//! of a call may signal into it, and only in the phase where it makes sense.
//!
//! Rules (API.md, DESIGN.md): an invite rings every online device of the
//! callee; the first answer wins and the other devices are told
//! `answered_elsewhere`; a reject from any of them ends the call; unanswered
//! calls end after the ring timeout; glare (two people inviting each other at
//! once) resolves to the call with the lesser id; a device that loses its
//! connection mid-call has a grace period to `resume`.

use std::collections::HashMap;
use std::ops::Add;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use courier_common::ids::{AccountId, DeviceId};
use courier_protocol::{CallId, Candidates, ClientBody, ErrorCode, HangupReason, IcePolicy, SasHex, Sdp, ServerEvent};

pub const RING_TIMEOUT_S_DEFAULT: u64 = 45;
pub const RECONNECT_GRACE_S_DEFAULT: u64 = 20;

/// A moment on the wall clock, in milliseconds since the Unix epoch. Call
/// state outlives a process and moves between signaling nodes, so its
/// deadlines are wall-clock times (the nodes keep their clocks in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct At(pub u64);

impl At {
    pub fn now() -> At {
        At(u64::try_from(courier_common::time::now_ms()).unwrap_or(0))
    }

    pub fn checked_add(self, duration: Duration) -> Option<At> {
        u64::try_from(duration.as_millis()).ok().and_then(|ms| self.0.checked_add(ms)).map(At)
    }

    pub fn saturating_duration_since(self, earlier: At) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for At {
    type Output = At;

    fn add(self, duration: Duration) -> At {
        self.checked_add(duration).unwrap_or(At(u64::MAX))
    }
}

/// One signed-in device of an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub account: AccountId,
    pub device: DeviceId,
}

/// What the I/O layer found out about an invite's callee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callee {
    pub account: AccountId,
    pub exists: bool,
    /// False when the callee takes calls from nobody or blocked the caller
    /// (one answer for both, so the caller cannot tell which).
    pub accepts_caller: bool,
    pub online_devices: Vec<DeviceId>,
    /// Either party has `p2p: never`.
    pub relay_only: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ring_timeout: Duration,
    pub reconnect_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ring_timeout: Duration::from_secs(RING_TIMEOUT_S_DEFAULT),
            reconnect_grace: Duration::from_secs(RECONNECT_GRACE_S_DEFAULT),
        }
    }
}

/// How a call ended, for its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub call_id: CallId,
    pub caller: AccountId,
    pub callee: AccountId,
    pub reason: HangupReason,
    /// From invite to the end, or to the answer when there was one.
    pub ringing: Duration,
    /// From answer to the end; `None` for a call never answered (missed).
    pub talking: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send { to: DeviceId, event: ServerEvent },
    Ended(Ended),
}

/// What the sender of a request gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ack,
    /// An accepted invite tells the caller which ICE policy to use.
    AckInvite {
        ice_policy: IcePolicy,
    },
    Error(ErrorCode, &'static str),
}

/// One call in progress. It serializes, so that a cluster of signaling
/// nodes can keep it in shared storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    id: CallId,
    caller: Endpoint,
    callee: AccountId,
    /// The callee's devices that were rung and are still reachable.
    rung: Vec<DeviceId>,
    answered: Option<DeviceId>,
    ice_policy: IcePolicy,
    started: At,
    answered_at: Option<At>,
    ring_deadline: At,
    /// Devices of the call that lost their connection, with their deadline.
    lost: HashMap<DeviceId, At>,
    /// What the other side said to a lost device, delivered when it
    /// resumes: the answer, a renegotiation and its candidates would
    /// otherwise go to a socket that is no longer there.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    held: HashMap<DeviceId, Vec<ServerEvent>>,
}

/// At most this many events are held for a lost device; past it the newest
/// are dropped (a renegotiation replaces everything held before it, so a
/// well-behaved peer never comes near).
const HELD_MAX: usize = 64;

impl Call {
    pub fn id(&self) -> &CallId {
        &self.id
    }

    /// The caller's and the callee's accounts.
    pub fn accounts(&self) -> [&str; 2] {
        [&self.caller.account, &self.callee]
    }

    /// Whether a device of the call lost its connection and has not resumed.
    pub fn has_lost(&self) -> bool {
        !self.lost.is_empty()
    }

    /// The next moment [`Switchboard::tick`] has something to do for this
    /// call: the end of its ringing or of a lost device's grace period.
    pub fn next_deadline(&self) -> Option<At> {
        let ringing = self.answered.is_none().then_some(self.ring_deadline);
        self.lost.values().copied().chain(ringing).min()
    }

    /// The device on the other side of `device`, once answered.
    fn peer_of(&self, device: &str) -> Option<&DeviceId> {
        let answered = self.answered.as_ref()?;
        if device == &*self.caller.device {
            Some(answered)
        } else if device == &**answered {
            Some(&self.caller.device)
        } else {
            None
        }
    }

    fn is_party(&self, from: &Endpoint) -> bool {
        from == &self.caller
            || (from.account == self.callee
                && (self.answered.as_deref() == Some(&*from.device)
                    || (self.answered.is_none() && self.rung.contains(&from.device))))
    }

    /// Every device that should hear about the call's end, but `except`.
    fn audience(&self, except: Option<&str>) -> Vec<DeviceId> {
        let mut devices = vec![self.caller.device.clone()];
        match &self.answered {
            Some(answered) => devices.push(answered.clone()),
            None => devices.extend(self.rung.iter().cloned()),
        }
        devices.retain(|device| Some(&**device) != except);
        devices
    }

    /// Sends `event` to `to`, or holds it until `to` resumes if it lost its
    /// connection. A renegotiation supersedes what was held before it: the
    /// older offer and its candidates belong to an ICE generation that is
    /// gone.
    fn deliver(&mut self, to: DeviceId, event: ServerEvent, out: &mut Vec<Output>) {
        if !self.lost.contains_key(&to) {
            out.push(Output::Send { to, event });
            return;
        }
        let held = self.held.entry(to).or_default();
        if matches!(event, ServerEvent::Negotiate { .. }) {
            held.retain(|event| !matches!(event, ServerEvent::Negotiate { .. } | ServerEvent::Candidates { .. }));
        }
        if held.len() < HELD_MAX {
            held.push(event);
        }
    }

    /// `device` is back: what was held for it, in order.
    fn resumed(&mut self, device: &DeviceId, out: &mut Vec<Output>) {
        self.lost.remove(device);
        for event in self.held.remove(device).unwrap_or_default() {
            out.push(Output::Send { to: device.clone(), event });
        }
    }

    /// A rung device says it is ringing; the caller hears it.
    fn ringing(&mut self, is_caller: bool, out: &mut Vec<Output>) -> Reply {
        if is_caller || self.answered.is_some() {
            return Reply::Error(ErrorCode::InvalidState, "only a rung device says ringing, before the answer");
        }
        let ringing = ServerEvent::Ringing { call_id: self.id.clone() };
        self.deliver(self.caller.device.clone(), ringing, out);
        Reply::Ack
    }

    /// The first answer wins: the caller gets it, the other rung devices
    /// are told the call was answered elsewhere.
    fn answer(
        &mut self,
        from: &Endpoint,
        is_caller: bool,
        sdp: Sdp,
        sas_nonce: Option<SasHex>,
        now: At,
        out: &mut Vec<Output>,
    ) -> Reply {
        if is_caller || self.answered.is_some() {
            return Reply::Error(ErrorCode::InvalidState, "the call is already answered");
        }
        self.answered = Some(from.device.clone());
        self.answered_at = Some(now);
        let call_id = &self.id;
        let ice_policy = self.ice_policy;
        let answered = ServerEvent::Answered { call_id: call_id.clone(), sdp, ice_policy, sas_nonce };
        let call_id = call_id.clone();
        self.deliver(self.caller.device.clone(), answered, out);
        for device in self.rung.iter().filter(|device| **device != from.device) {
            let elsewhere = ServerEvent::AnsweredElsewhere { call_id: call_id.clone() };
            out.push(Output::Send { to: device.clone(), event: elsewhere });
        }
        self.rung.retain(|device| *device == from.device);
        Reply::Ack
    }

    /// Trickle ICE: to the peer once answered; before the answer, the
    /// caller's candidates go to every rung device.
    fn relay_candidates(
        &mut self,
        from: &str,
        is_caller: bool,
        candidates: Candidates,
        out: &mut Vec<Output>,
    ) -> Reply {
        let call_id = &self.id;
        match (self.peer_of(from).cloned(), is_caller) {
            (Some(peer), _) => {
                let event = ServerEvent::Candidates { call_id: call_id.clone(), candidates };
                self.deliver(peer, event, out);
            }
            (None, true) => {
                for device in &self.rung {
                    out.push(Output::Send {
                        to: device.clone(),
                        event: ServerEvent::Candidates { call_id: call_id.clone(), candidates: candidates.clone() },
                    });
                }
            }
            (None, false) => return Reply::Error(ErrorCode::InvalidState, "answer before sending candidates"),
        }
        Reply::Ack
    }
}

/// What an invite offers: the call's id, the caller's SDP and its SAS commitment.
#[derive(Debug, Clone)]
struct Invitation {
    call_id: CallId,
    sdp: Sdp,
    sas_commit: Option<SasHex>,
}

/// Every call in progress.
#[derive(Debug, Default)]
pub struct Switchboard {
    calls: HashMap<CallId, Call>,
    limits: Limits,
}

impl Switchboard {
    pub fn new(limits: Limits) -> Self {
        Switchboard { calls: HashMap::new(), limits }
    }

    /// A switchboard holding `calls`: the part of a shared state a cluster
    /// node loaded for one step.
    pub fn with_calls(limits: Limits, calls: impl IntoIterator<Item = Call>) -> Self {
        Switchboard { calls: calls.into_iter().map(|call| (call.id.clone(), call)).collect(), limits }
    }

    pub fn calls_in_progress(&self) -> usize {
        self.calls.len()
    }

    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn call(&self, call_id: &str) -> Option<&Call> {
        self.calls.get(call_id)
    }

    /// Handles a call message from `from` at `now`. An invite comes with
    /// what the I/O layer looked up about its callee.
    pub fn handle(
        &mut self,
        from: &Endpoint,
        body: ClientBody,
        callee: Option<Callee>,
        now: At,
    ) -> (Reply, Vec<Output>) {
        let mut out = Vec::new();
        let reply = match (body, callee) {
            (ClientBody::Invite { call_id, sdp, sas_commit, .. }, Some(callee)) => {
                self.invite(from, Invitation { call_id, sdp, sas_commit }, callee, now, &mut out)
            }
            (ClientBody::Invite { .. }, None) => Reply::Error(ErrorCode::CalleeNotFound, "there is no such account"),
            (ClientBody::Auth { .. } | ClientBody::Reauth { .. } | ClientBody::Ping, _) => {
                Reply::Error(ErrorCode::InvalidState, "not a call message")
            }
            (other, _) => self.in_call(from, other, now, &mut out),
        };
        (reply, out)
    }

    fn invite(
        &mut self,
        from: &Endpoint,
        invitation: Invitation,
        callee: Callee,
        now: At,
        out: &mut Vec<Output>,
    ) -> Reply {
        let crossing = match self.check_invite(from, &invitation.call_id, &callee) {
            Ok(crossing) => crossing,
            Err(refusal) => return refusal,
        };
        let ice_policy = if callee.relay_only { IcePolicy::Relay } else { IcePolicy::All };
        if let Some(other) = crossing {
            if other < invitation.call_id {
                // Their invite has the lesser id: it stands, ours ends now.
                end_at_once(from, invitation.call_id, callee.account, HangupReason::Glare, out);
                return Reply::AckInvite { ice_policy };
            }
            // Ours has the lesser id: theirs ends, ours rings.
            self.end(&other, HangupReason::Glare, None, now, out);
        }
        if callee.online_devices.is_empty() {
            end_at_once(from, invitation.call_id, callee.account, HangupReason::Unavailable, out);
            return Reply::AckInvite { ice_policy };
        }
        self.ring(from, invitation, callee, ice_policy, now, out);
        Reply::AckInvite { ice_policy }
    }

    /// Whether `from` may invite `callee` now; the call it crosses (glare:
    /// the callee is calling `from` right now), if any. Changes nothing.
    fn check_invite(&self, from: &Endpoint, call_id: &CallId, callee: &Callee) -> Result<Option<CallId>, Reply> {
        if self.calls.contains_key(call_id) {
            return Err(Reply::Error(ErrorCode::InvalidState, "a call with this id exists; use a new call_id"));
        }
        if callee.account == from.account {
            return Err(Reply::Error(ErrorCode::InvalidState, "you cannot call yourself"));
        }
        let crossing = self
            .calls
            .values()
            .find(|call| {
                call.answered.is_none() && call.caller.account == callee.account && call.callee == from.account
            })
            .map(|call| call.id.clone());
        if crossing.is_none() && self.account_busy(&from.account) {
            return Err(Reply::Error(ErrorCode::AlreadyInCall, "you are already in a call"));
        }
        if !callee.exists {
            return Err(Reply::Error(ErrorCode::CalleeNotFound, "there is no such account"));
        }
        if !callee.accepts_caller {
            return Err(Reply::Error(ErrorCode::CalleeNotAccepting, "this person does not take calls from you"));
        }
        if crossing.is_none() && self.account_busy(&callee.account) {
            return Err(Reply::Error(ErrorCode::CalleeBusy, "this person is in another call"));
        }
        Ok(crossing)
    }

    /// Rings every online device of the callee and holds the call until the
    /// ring timeout.
    fn ring(
        &mut self,
        from: &Endpoint,
        invitation: Invitation,
        callee: Callee,
        ice_policy: IcePolicy,
        now: At,
        out: &mut Vec<Output>,
    ) {
        let Invitation { call_id, sdp, sas_commit } = invitation;
        for device in &callee.online_devices {
            out.push(Output::Send {
                to: device.clone(),
                event: ServerEvent::Incoming {
                    call_id: call_id.clone(),
                    caller: from.account.clone(),
                    sdp: sdp.clone(),
                    ice_policy,
                    sas_commit: sas_commit.clone(),
                },
            });
        }
        let ring_deadline = now.checked_add(self.limits.ring_timeout).unwrap_or(now);
        let call = Call {
            id: call_id.clone(),
            caller: from.clone(),
            callee: callee.account,
            rung: callee.online_devices,
            answered: None,
            ice_policy,
            started: now,
            answered_at: None,
            ring_deadline,
            lost: HashMap::new(),
            held: HashMap::new(),
        };
        self.calls.insert(call_id, call);
    }

    /// Whether `account` is placing, receiving-and-answered, or in a call.
    fn account_busy(&self, account: &str) -> bool {
        self.calls
            .values()
            .any(|call| &*call.caller.account == account || (&*call.callee == account && call.answered.is_some()))
    }

    fn in_call(&mut self, from: &Endpoint, request: ClientBody, now: At, out: &mut Vec<Output>) -> Reply {
        let call_id = match request.call_id() {
            Some(call_id) if !matches!(request, ClientBody::Invite { .. }) => call_id.clone(),
            _ => return Reply::Error(ErrorCode::InvalidState, "not a message about a call in progress"),
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return Reply::Error(ErrorCode::UnknownCall, "there is no such call in progress");
        };
        if !call.is_party(from) {
            return Reply::Error(ErrorCode::NotInCall, "this device is not in that call");
        }
        let is_caller = from == &call.caller;
        match request {
            ClientBody::Ringing { .. } => call.ringing(is_caller, out),
            ClientBody::Answer { sdp, sas_nonce, .. } => call.answer(from, is_caller, sdp, sas_nonce, now, out),
            ClientBody::Reject { .. } => {
                if is_caller || call.answered.is_some() {
                    return Reply::Error(ErrorCode::InvalidState, "only a rung device rejects, before the answer");
                }
                self.end(&call_id, HangupReason::Rejected, Some(&from.device), now, out);
                Reply::Ack
            }
            ClientBody::Hangup { reason, .. } => {
                self.end(&call_id, reason, Some(&from.device), now, out);
                Reply::Ack
            }
            ClientBody::Candidates { candidates, .. } => {
                call.relay_candidates(&from.device, is_caller, candidates, out)
            }
            ClientBody::Negotiate { sdp, kind, .. } => {
                let Some(peer) = call.peer_of(&from.device).cloned() else {
                    return Reply::Error(ErrorCode::InvalidState, "renegotiation needs an answered call");
                };
                call.deliver(peer, ServerEvent::Negotiate { call_id, sdp, kind }, out);
                Reply::Ack
            }
            ClientBody::SasReveal { nonce, .. } => {
                let Some(peer) = call.peer_of(&from.device).filter(|_| is_caller).cloned() else {
                    return Reply::Error(ErrorCode::InvalidState, "the caller reveals its nonce after the answer");
                };
                call.deliver(peer, ServerEvent::SasReveal { call_id, nonce }, out);
                Reply::Ack
            }
            ClientBody::Resume { .. } => {
                call.resumed(&from.device, out);
                Reply::Ack
            }
            ClientBody::Invite { .. } | ClientBody::Auth { .. } | ClientBody::Reauth { .. } | ClientBody::Ping => {
                Reply::Error(ErrorCode::InvalidState, "not a message about a call in progress")
            }
        }
    }

    /// Ends a call: tells its devices (but `except`) and records it.
    fn end(&mut self, call_id: &CallId, reason: HangupReason, except: Option<&str>, now: At, out: &mut Vec<Output>) {
        let Some(call) = self.calls.remove(call_id) else { return };
        for device in call.audience(except) {
            if call.lost.contains_key(&device) {
                continue;
            }
            out.push(Output::Send { to: device, event: ServerEvent::Hangup { call_id: call.id.clone(), reason } });
        }
        let answered_at = call.answered_at;
        out.push(Output::Ended(Ended {
            call_id: call.id,
            caller: call.caller.account,
            callee: call.callee,
            reason,
            ringing: answered_at.unwrap_or(now).saturating_duration_since(call.started),
            talking: answered_at.map(|at| now.saturating_duration_since(at)),
        }));
    }

    /// A device's connection closed at `now`: its calls wait the grace
    /// period for it to `resume`.
    pub fn disconnected(&mut self, who: &Endpoint, now: At) -> Vec<Output> {
        self.left(who, now, false)
    }

    /// A device signed out (its session revoked) and its connection closed:
    /// it cannot come back, so its calls end now (`lost_connection` to the
    /// other side) instead of after the grace period.
    pub fn signed_out(&mut self, who: &Endpoint, now: At) -> Vec<Output> {
        self.left(who, now, true)
    }

    fn left(&mut self, who: &Endpoint, now: At, for_good: bool) -> Vec<Output> {
        let mut out = Vec::new();
        let grace = now.checked_add(self.limits.reconnect_grace).unwrap_or(now);
        let mut unreachable_calls = Vec::new();
        let mut abandoned_calls = Vec::new();
        for call in self.calls.values_mut() {
            let in_call = who == &call.caller || call.answered.as_deref() == Some(&*who.device);
            if in_call && for_good {
                abandoned_calls.push(call.id.clone());
            } else if in_call {
                call.lost.insert(who.device.clone(), grace);
            } else if call.answered.is_none() && call.callee == who.account && call.rung.contains(&who.device) {
                call.rung.retain(|device| *device != who.device);
                if call.rung.is_empty() {
                    unreachable_calls.push(call.id.clone());
                }
            }
        }
        for call_id in unreachable_calls {
            self.end(&call_id, HangupReason::Unavailable, None, now, &mut out);
        }
        for call_id in abandoned_calls {
            self.end(&call_id, HangupReason::LostConnection, Some(&who.device), now, &mut out);
        }
        out
    }

    /// Ends what time has run out on: unanswered calls past the ring timeout
    /// and calls whose lost device did not come back within the grace period.
    pub fn tick(&mut self, now: At) -> Vec<Output> {
        let mut out = Vec::new();
        let expired: Vec<(CallId, HangupReason)> = self
            .calls
            .values()
            .filter_map(|call| {
                if call.lost.values().any(|deadline| *deadline <= now) {
                    Some((call.id.clone(), HangupReason::LostConnection))
                } else if call.answered.is_none() && call.ring_deadline <= now {
                    Some((call.id.clone(), HangupReason::InviteTimeout))
                } else {
                    None
                }
            })
            .collect();
        for (call_id, reason) in expired {
            self.end(&call_id, reason, None, now, &mut out);
        }
        out
    }

    /// Ends every call: the server is stopping.
    pub fn shutdown(&mut self, now: At) -> Vec<Output> {
        let mut out = Vec::new();
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for call_id in ids {
            self.end(&call_id, HangupReason::ServerShutdown, None, now, &mut out);
        }
        out
    }
}

/// Ends an invite that never rang: the caller hears why, the call is recorded.
fn end_at_once(from: &Endpoint, call_id: CallId, callee: AccountId, reason: HangupReason, out: &mut Vec<Output>) {
    out.push(Output::Send { to: from.device.clone(), event: ServerEvent::Hangup { call_id: call_id.clone(), reason } });
    out.push(Output::Ended(Ended {
        call_id,
        caller: from.account.clone(),
        callee,
        reason,
        ringing: Duration::ZERO,
        talking: None,
    }));
}

#[cfg(test)]
mod tests;
