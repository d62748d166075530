//! TCP connections of a capture: one [`Flow`] per connection with the state needed to find
//! its ClientHello and ServerHello, in a bounded table whose idle flows expire by capture
//! time.
//!
//! A flow's client is the sender of the SYN (or the receiver of the SYN-ACK) when the
//! capture holds it; otherwise the side whose first bytes turn out to be a ClientHello.
//! While a flow is *collecting*, the first bytes of each direction are reassembled
//! ([`Stream`]) and looked at with the pure hello core each time a TLS record completes;
//! once both hellos are known (or the client's first flight is not a hello) the buffers
//! are freed and the flow only counts bytes and watches for FIN/RST, so bulk data costs
//! one table lookup per packet.
//!
//! Bounds: at most `max_flows` flows (the least recently seen are evicted when the table
//! is full), at most [`MAX_HELLO_BYTES`] in order plus as much out of order per direction,
//! and at most `buffer_budget` bytes buffered by all flows together (past it the oldest
//! collecting flows stop collecting).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::capture::Nanos;
use super::link::{ACK, Endpoint, FIN, RST, SYN, Segment};
use super::reassembly::Stream;
use crate::config::StartTlsConfig;
use crate::hello::{
    self, ClientHelloSummary, Detection, MAX_HELLO_BYTES, ServerDetection, ServerHelloSummary,
};
use crate::starttls::{Protocol, Role, Scan, Scanner};

/// The two endpoints of a connection, in a fixed order (`a < b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub a: Endpoint,
    pub b: Endpoint,
}

impl FlowKey {
    /// The key of a segment and the index (0 = `a`, 1 = `b`) of its sender.
    pub fn of(src: Endpoint, dst: Endpoint) -> (FlowKey, usize) {
        if src <= dst {
            (FlowKey { a: src, b: dst }, 0)
        } else {
            (FlowKey { a: dst, b: src }, 1)
        }
    }

    pub fn endpoint(&self, side: usize) -> Endpoint {
        if side == 0 { self.a } else { self.b }
    }
}

/// What the client's first flight turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientState {
    Waiting,
    Hello(Box<ClientHelloSummary>),
    NotTls,
    TooLarge,
}

/// What the server answered first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    Waiting,
    Hello(Box<ServerHelloSummary>),
    Alert {
        level: u8,
        description: u8,
    },
    /// Not TLS, too large, or never complete: nothing negotiated is known.
    Unknown,
}

/// Why a flow left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// FIN from both sides, or a RST.
    Closed,
    /// No packet for the idle time (capture time).
    Idle,
    /// The table was full and this flow was among the least recently seen.
    Evicted,
    /// A new connection (a SYN with another sequence number) reused the ports.
    Reused,
    /// The capture ended with the flow open.
    CaptureEnd,
}

/// One TCP connection.
#[derive(Debug)]
pub struct Flow {
    pub id: u64,
    pub key: FlowKey,
    pub first_ts: Nanos,
    pub last_ts: Nanos,
    /// When the ClientHello completed.
    pub hello_ts: Option<Nanos>,
    /// The client's side (index into `key`), once known.
    pub client: Option<usize>,
    /// The client's SYN was seen (so the connection's start is in the capture).
    pub syn: bool,
    /// The server's SYN-ACK was seen.
    pub syn_ack: bool,
    /// The server answered (SYN-ACK or any packet from it).
    pub server_answered: bool,
    client_isn: Option<u32>,
    streams: [Stream; 2],
    /// Per side: where the first incomplete TLS record starts (see `worth_looking`).
    frontier: [usize; 2],
    looked: [bool; 2],
    /// Per side: its first bytes were not a ClientHello (used when no SYN was seen).
    not_client: [bool; 2],
    /// Per side: the first payload byte.
    pub first_byte: [Option<u8>; 2],
    /// Per side: TCP payload bytes on the wire (retransmissions included).
    pub bytes: [u64; 2],
    pub fin: [bool; 2],
    /// The side that sent a RST.
    pub rst: Option<usize>,
    pub client_state: ClientState,
    pub server_state: ServerState,
    /// A plain-HTTP request's User-Agent, when the client's first flight is one.
    pub user_agent: Option<String>,
    /// The protocol of a STARTTLS port (`[starttls]`) the server listens on.
    pub starttls: Option<Protocol>,
    /// The protocols of the two endpoints' ports, were each the server.
    starttls_ports: [Option<Protocol>; 2],
    /// A STARTTLS session's prelude while it lasts (boxed: most flows have none).
    prelude: Option<Box<Prelude>>,
    /// Per side: TLS began after a prelude.
    upgraded: [bool; 2],
    prelude_max: usize,
    /// Still reassembling.
    pub collecting: bool,
    /// Collecting stopped early (memory budget): a hello may be missing.
    pub starved: bool,
    pub end: End,
}

/// The cleartext part of a STARTTLS session: per side, the scanner that finds where TLS
/// begins (until it has), and the prelude's bytes so far, both sides together.
#[derive(Debug)]
struct Prelude {
    scanners: [Option<Scanner>; 2],
    bytes: usize,
}

impl Flow {
    fn new(id: u64, key: FlowKey, ts: Nanos, starttls: &StartTlsConfig) -> Flow {
        Flow {
            starttls: None,
            starttls_ports: [starttls.protocol(key.a.port), starttls.protocol(key.b.port)],
            prelude: None,
            upgraded: [false; 2],
            prelude_max: starttls.prelude_max_bytes,
            id,
            key,
            first_ts: ts,
            last_ts: ts,
            hello_ts: None,
            client: None,
            syn: false,
            syn_ack: false,
            server_answered: false,
            client_isn: None,
            streams: [Stream::default(), Stream::default()],
            frontier: [0; 2],
            looked: [false; 2],
            not_client: [false; 2],
            first_byte: [None; 2],
            bytes: [0; 2],
            fin: [false; 2],
            rst: None,
            client_state: ClientState::Waiting,
            user_agent: None,
            server_state: ServerState::Waiting,
            collecting: true,
            starved: false,
            end: End::CaptureEnd,
        }
    }

    /// The client's endpoint and the server's, once the client is known.
    pub fn client_server(&self) -> Option<(Endpoint, Endpoint)> {
        let c = self.client?;
        Some((self.key.endpoint(c), self.key.endpoint(1 - c)))
    }

    /// Bytes buffered.
    fn held(&self) -> usize {
        self.streams[0].held() + self.streams[1].held()
    }

    /// The client's first bytes so far (for the final look when the flow ends).
    pub fn client_bytes(&self) -> &[u8] {
        match self.client {
            Some(c) => self.streams[c].data(),
            None => &[],
        }
    }

    fn set_client(&mut self, side: usize) {
        self.client = Some(side);
        self.starttls = self.starttls_ports[1 - side];
        self.prelude = match self.starttls {
            Some(p) if self.bytes_seen() == 0 => {
                let role = |s: usize| {
                    if s == side {
                        Role::Client
                    } else {
                        Role::Server
                    }
                };
                Some(Box::new(Prelude {
                    scanners: [
                        Some(Scanner::new(p, role(0))),
                        Some(Scanner::new(p, role(1))),
                    ],
                    bytes: 0,
                }))
            }
            _ => None,
        };
    }

    /// Payload bytes placed so far (a prelude can only be read from its start).
    fn bytes_seen(&self) -> usize {
        self.streams[0].data().len() + self.streams[1].data().len()
    }

    /// The client began TLS after a STARTTLS prelude.
    pub fn starttls_upgraded(&self) -> bool {
        self.client.is_some_and(|c| self.upgraded[c])
    }

    /// Reads a side's new in-order bytes while its prelude lasts; true once TLS has begun
    /// on that side (its stream then starts at the TLS record).
    fn after_prelude(&mut self, side: usize) -> bool {
        let Some(state) = self.prelude.as_mut() else {
            return true;
        };
        let Some(scan) = state.scanners[side].as_mut() else {
            return true;
        };
        let stream = &mut self.streams[side];
        let data = stream.data();
        let (prelude, tls) = match scan.feed(data) {
            Scan::Prelude => (data.len(), false),
            Scan::Tls(at) => (at, true),
        };
        stream.consume(prelude);
        state.bytes += prelude;
        let over = state.bytes > self.prelude_max;
        if tls {
            state.scanners[side] = None;
            if state.scanners.iter().all(Option::is_none) {
                self.prelude = None;
            }
            self.upgraded[side] = true;
            self.frontier[side] = 0;
            self.looked[side] = false;
            return true;
        }
        if over {
            // Past the bound, as in the proxy: the session goes on unwatched.
            self.client_not_hello(ClientState::NotTls);
        }
        false
    }

    /// Stops reassembling and frees the buffers.
    fn stop_collecting(&mut self) {
        self.collecting = false;
        for s in &mut self.streams {
            s.clear();
        }
    }

    /// One segment of this flow (already known to belong to it).
    fn segment(&mut self, side: usize, seg: &Segment<'_>, ts: Nanos) {
        self.last_ts = self.last_ts.max(ts);
        self.bytes[side] += u64::from(seg.wire_len);
        if seg.flags & SYN != 0 {
            if seg.flags & ACK == 0 {
                self.syn = true;
                self.set_client(side);
                self.client_isn = Some(seg.seq);
                self.streams[side].set_start(seg.seq.wrapping_add(1));
            } else {
                self.syn_ack = true;
                self.server_answered = true;
                if self.client.is_none() {
                    self.set_client(1 - side);
                }
                self.streams[side].set_start(seg.seq.wrapping_add(1));
                self.streams[1 - side].set_start(seg.ack);
            }
        }
        if self.client.is_none() && seg.flags & SYN == 0 && !seg.payload.is_empty() {
            // No handshake in the capture: the side on a STARTTLS port is the server (its
            // first bytes are a greeting, not a hello).
            match self.starttls_ports {
                [Some(_), None] => self.set_client(1),
                [None, Some(_)] => self.set_client(0),
                _ => {}
            }
        }
        if self.client.is_some_and(|c| c != side) {
            self.server_answered = true;
        }
        if seg.flags & FIN != 0 {
            self.fin[side] = true;
        }
        if seg.flags & RST != 0 {
            self.rst = Some(side);
        }
        if seg.payload.is_empty() {
            return;
        }
        if self.first_byte[side].is_none() && self.streams[side].data().is_empty() {
            // The first byte in stream order is known once the stream starts; before that
            // the first captured payload stands in for it.
            self.first_byte[side] = seg.payload.first().copied();
        }
        if !self.collecting {
            return;
        }
        // Data in a SYN (TCP Fast Open) starts after the SYN's sequence number.
        let seq = if seg.flags & SYN != 0 {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        if self.streams[side].add(seq, seg.payload, MAX_HELLO_BYTES) {
            if !self.after_prelude(side) {
                return;
            }
            if let Some(&b) = self.streams[side].data().first() {
                self.first_byte[side] = Some(b);
            }
            self.look(side, ts);
        }
    }

    /// Looks at one side's bytes again when a record completed since the last look.
    fn look(&mut self, side: usize, ts: Nanos) {
        if !worth_looking(
            self.streams[side].data(),
            &mut self.frontier[side],
            &mut self.looked[side],
        ) {
            return;
        }
        match self.client {
            Some(c) if c == side => self.look_client(side, ts, false),
            Some(_) => self.look_server(side, false),
            None => self.guess_client(side, ts),
        }
        if !matches!(self.client_state, ClientState::Waiting)
            && !matches!(self.server_state, ServerState::Waiting)
        {
            self.stop_collecting();
        }
    }

    /// No SYN seen: the side whose first bytes are a ClientHello is the client.
    fn guess_client(&mut self, side: usize, ts: Nanos) {
        let detection = hello::detect_client_hello(self.streams[side].data(), MAX_HELLO_BYTES);
        match &detection {
            Detection::Hello(_) | Detection::TooLarge => {
                self.set_client(side);
                self.client_detected(side, ts, false, detection);
                let other = 1 - side;
                if !self.streams[other].data().is_empty() {
                    self.frontier[other] = 0;
                    self.looked[other] = false;
                    self.look(other, ts);
                }
            }
            Detection::NotTls => {
                self.not_client[side] = true;
                if self.not_client[1 - side] {
                    // Neither side starts with a hello: a connection that began before
                    // the capture did. Nothing to report.
                    self.client_state = ClientState::NotTls;
                    self.server_state = ServerState::Unknown;
                    self.stop_collecting();
                }
            }
            Detection::NeedMore => {}
        }
    }

    fn look_client(&mut self, side: usize, ts: Nanos, last: bool) {
        if !matches!(self.client_state, ClientState::Waiting) {
            return;
        }
        let detection = hello::detect_client_hello(self.streams[side].data(), MAX_HELLO_BYTES);
        self.client_detected(side, ts, last, detection);
    }

    /// What the client's bytes so far turned out to be.
    fn client_detected(&mut self, side: usize, ts: Nanos, last: bool, detection: Detection) {
        if !matches!(self.client_state, ClientState::Waiting) {
            return;
        }
        let held = self.streams[side].data().len();
        match detection {
            Detection::Hello(h) => {
                self.client_state = ClientState::Hello(h);
                self.hello_ts = Some(ts);
                self.streams[side].clear();
            }
            Detection::NotTls => {
                // Plain HTTP says who the host is (CRL fetches name the Windows version).
                self.user_agent =
                    crate::inventory::agents::http_user_agent(self.streams[side].data());
                self.client_not_hello(ClientState::NotTls)
            }
            Detection::TooLarge => self.client_not_hello(ClientState::TooLarge),
            Detection::NeedMore if held >= MAX_HELLO_BYTES => {
                self.client_not_hello(ClientState::TooLarge)
            }
            Detection::NeedMore => {
                if last {
                    self.stop_collecting();
                }
            }
        }
    }

    /// The first flight is not a hello: the server's answer is not watched either (as in
    /// the proxy).
    fn client_not_hello(&mut self, state: ClientState) {
        self.client_state = state;
        self.server_state = ServerState::Unknown;
        self.stop_collecting();
    }

    fn look_server(&mut self, side: usize, last: bool) {
        if !matches!(self.server_state, ServerState::Waiting) {
            return;
        }
        let data = self.streams[side].data();
        self.server_state = match hello::detect_server_hello(data, MAX_HELLO_BYTES) {
            ServerDetection::Hello(h) => ServerState::Hello(h),
            ServerDetection::Alert { level, description } => {
                ServerState::Alert { level, description }
            }
            ServerDetection::NotTls | ServerDetection::TooLarge => ServerState::Unknown,
            ServerDetection::NeedMore if last || data.len() >= MAX_HELLO_BYTES => {
                ServerState::Unknown
            }
            ServerDetection::NeedMore => return,
        };
        self.streams[side].clear();
    }

    /// Settles what is still open when the flow ends: one last look at each side.
    pub fn settle(&mut self, end: End) {
        self.end = end;
        if self.collecting {
            if let Some(c) = self.client {
                let ts = self.last_ts;
                if !self.streams[c].data().is_empty() {
                    self.look_client(c, ts, true);
                }
                if !self.streams[1 - c].data().is_empty() {
                    self.look_server(1 - c, true);
                }
            }
        }
        if matches!(self.server_state, ServerState::Waiting) {
            self.server_state = ServerState::Unknown;
        }
    }

    /// Both sides closed, or one reset.
    fn closed(&self) -> bool {
        self.rst.is_some() || (self.fin[0] && self.fin[1])
    }
}

/// True when `data` may answer differently than at the last look: the first time, then
/// each time a TLS record (or the SSLv2 record) completes. Spares the hello parser a
/// re-parse per segment when a hello arrives in many small pieces.
fn worth_looking(data: &[u8], frontier: &mut usize, looked: &mut bool) -> bool {
    let before = *frontier;
    match data.first() {
        None => return false,
        Some(b) if b & 0x80 != 0 => {
            let len = usize::from(u16::from_be_bytes([
                b & 0x7f,
                data.get(1).copied().unwrap_or(0),
            ]));
            if data.len() >= 2 && data.len() >= len + 2 {
                *frontier = len + 2;
            }
        }
        Some(_) => {
            while let (Some(&hi), Some(&lo)) = (data.get(*frontier + 3), data.get(*frontier + 4)) {
                let end = *frontier + 5 + usize::from(u16::from_be_bytes([hi, lo]));
                if end > data.len() {
                    break;
                }
                *frontier = end;
            }
        }
    }
    let first = !*looked;
    *looked = true;
    first || *frontier != before || data.len() >= MAX_HELLO_BYTES
}

/// Limits of the table.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_flows: usize,
    /// A flow with no packet for this long (capture time) ends.
    pub idle: Nanos,
    /// Bytes all flows together may buffer.
    pub buffer_budget: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_flows: 262_144,
            idle: 300 * 1_000_000_000,
            buffer_budget: 256 * 1024 * 1024,
        }
    }
}

/// Counters of the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableStats {
    pub flows: u64,
    pub client_hellos: u64,
    pub server_hellos: u64,
    pub evicted: u64,
    pub starved: u64,
    pub peak_flows: usize,
    pub peak_buffered: usize,
}

/// The flow table.
pub struct FlowTable {
    flows: HashMap<FlowKey, Flow>,
    limits: Limits,
    next_id: u64,
    /// Latest capture time seen (capture time may step back between interfaces/files).
    now: Nanos,
    next_sweep: Nanos,
    buffered: usize,
    pub stats: TableStats,
    /// Flows that ended, for the caller to take.
    pub ended: Vec<Flow>,
    starttls: StartTlsConfig,
}

impl FlowTable {
    pub fn new(limits: Limits) -> FlowTable {
        FlowTable {
            flows: HashMap::new(),
            limits: Limits {
                max_flows: limits.max_flows.max(1),
                idle: limits.idle.max(1),
                ..limits
            },
            next_id: 1,
            now: Nanos::MIN,
            next_sweep: Nanos::MIN,
            buffered: 0,
            stats: TableStats::default(),
            ended: Vec::new(),
            starttls: StartTlsConfig::default(),
        }
    }

    /// Reads the sessions to these ports past their STARTTLS prelude.
    pub fn with_starttls(mut self, starttls: StartTlsConfig) -> FlowTable {
        self.starttls = starttls;
        self
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// One TCP segment captured at `ts`.
    pub fn segment(&mut self, seg: &Segment<'_>, ts: Nanos) {
        if ts > self.now {
            self.now = ts;
            if ts >= self.next_sweep {
                self.sweep();
                self.next_sweep = ts.saturating_add((self.limits.idle / 8).max(1_000_000_000));
            }
        }
        let (key, side) = FlowKey::of(seg.src, seg.dst);
        // A SYN with another sequence number: the ports were reused by a new connection.
        let syn_only = seg.flags & (SYN | ACK) == SYN;
        if syn_only
            && self
                .flows
                .get(&key)
                .is_some_and(|f| f.client_isn.is_some_and(|isn| isn != seg.seq))
        {
            self.finish(&key, End::Reused);
        }
        // Only a SYN, a SYN-ACK or data starts a flow: a late ACK or FIN of a flow that
        // already ended does not.
        let starts = seg.flags & SYN != 0 || !seg.payload.is_empty();
        if self.flows.len() >= self.limits.max_flows && !self.flows.contains_key(&key) {
            if !starts {
                return;
            }
            self.evict();
        }
        // One lookup for the packet (bulk data of a known flow is nearly every packet).
        let len = self.flows.len();
        let flow = match self.flows.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                if !starts {
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.stats.flows += 1;
                self.stats.peak_flows = self.stats.peak_flows.max(len + 1);
                v.insert(Flow::new(id, key, ts, &self.starttls))
            }
        };
        let before = if flow.collecting { flow.held() } else { 0 };
        let had_client = matches!(flow.client_state, ClientState::Hello(_));
        let had_server = matches!(flow.server_state, ServerState::Hello(_));
        flow.segment(side, seg, ts);
        let after = if flow.collecting { flow.held() } else { 0 };
        self.stats.client_hellos +=
            u64::from(!had_client && matches!(flow.client_state, ClientState::Hello(_)));
        self.stats.server_hellos +=
            u64::from(!had_server && matches!(flow.server_state, ServerState::Hello(_)));
        self.buffered = (self.buffered + after).saturating_sub(before);
        self.stats.peak_buffered = self.stats.peak_buffered.max(self.buffered);
        if flow.closed() {
            self.finish(&key, End::Closed);
        } else if self.buffered > self.limits.buffer_budget {
            self.starve();
        }
    }

    fn finish(&mut self, key: &FlowKey, end: End) {
        if let Some(mut flow) = self.flows.remove(key) {
            if flow.collecting {
                self.buffered = self.buffered.saturating_sub(flow.held());
            }
            flow.settle(end);
            self.ended.push(flow);
        }
    }

    /// Ends the flows idle for longer than the limit.
    fn sweep(&mut self) {
        let cutoff = self.now.saturating_sub(self.limits.idle);
        let idle: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.last_ts < cutoff)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            self.finish(&k, End::Idle);
        }
    }

    /// The table is full: end the idle flows, else the least recently seen eighth.
    fn evict(&mut self) {
        self.sweep();
        if self.flows.len() < self.limits.max_flows {
            return;
        }
        let mut seen: Vec<(Nanos, FlowKey)> =
            self.flows.iter().map(|(k, f)| (f.last_ts, *k)).collect();
        let n = (seen.len() / 8).max(1);
        seen.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        for (_, k) in seen.into_iter().take(n) {
            self.stats.evicted += 1;
            self.finish(&k, End::Evicted);
        }
    }

    /// Too many bytes buffered: the least recently seen collecting flows stop collecting
    /// until a quarter of the budget is free again.
    fn starve(&mut self) {
        let mut collecting: Vec<(Nanos, FlowKey)> = self
            .flows
            .iter()
            .filter(|(_, f)| f.collecting)
            .map(|(k, f)| (f.last_ts, *k))
            .collect();
        collecting.sort_unstable_by_key(|(t, _)| *t);
        let target = self.limits.buffer_budget / 4 * 3;
        for (_, k) in collecting {
            if self.buffered <= target {
                break;
            }
            if let Some(f) = self.flows.get_mut(&k) {
                self.buffered = self.buffered.saturating_sub(f.held());
                f.stop_collecting();
                f.starved = true;
                self.stats.starved += 1;
            }
        }
    }

    /// Ends every flow (the capture is over), oldest first.
    pub fn finish_all(&mut self) {
        let mut keys: Vec<(u64, FlowKey)> = self.flows.iter().map(|(k, f)| (f.id, *k)).collect();
        keys.sort_unstable_by_key(|(id, _)| *id);
        for (_, k) in keys {
            self.finish(&k, End::CaptureEnd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, port: u16) -> Endpoint {
        let mut ip = [0u8; 16];
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12] = 10;
        ip[15] = last;
        Endpoint { ip, port }
    }

    fn seg<'a>(from_client: bool, flags: u8, seq: u32, ack: u32, payload: &'a [u8]) -> Segment<'a> {
        let (c, s) = (ep(1, 50000), ep(2, 443));
        let (src, dst) = if from_client { (c, s) } else { (s, c) };
        Segment {
            src,
            dst,
            seq,
            ack,
            flags,
            payload,
            wire_len: payload.len() as u32,
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}.bin",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn handshake_in_pieces_out_of_order() {
        let hello = fixture("curl_tls12");
        let server = fixture("server_openssl_tls12");
        let mut t = FlowTable::new(Limits::default());
        t.segment(&seg(true, SYN, 999, 0, b""), 1);
        t.segment(&seg(false, SYN | ACK, 4999, 1000, b""), 2);
        let (a, b) = hello.split_at(100);
        t.segment(&seg(true, ACK, 1100, 5000, b), 3);
        assert_eq!(t.stats.client_hellos, 0);
        t.segment(&seg(true, ACK, 1000, 5000, a), 4);
        assert_eq!(t.stats.client_hellos, 1);
        for (i, chunk) in server.chunks(7).enumerate() {
            t.segment(&seg(false, ACK, 5000 + 7 * i as u32, 0, chunk), 5);
        }
        assert_eq!(t.stats.server_hellos, 1);
        t.segment(&seg(false, ACK, 9000, 0, &[0x17; 1400]), 6);
        t.segment(&seg(true, FIN | ACK, 2000, 0, b""), 7);
        assert!(t.ended.is_empty());
        t.segment(&seg(false, FIN | ACK, 10400, 0, b""), 8);
        let f = t.ended.pop().unwrap();
        assert_eq!(f.end, End::Closed);
        assert!(!f.collecting);
        assert_eq!(f.client_server().unwrap().0.port, 50000);
        assert!(matches!(f.client_state, ClientState::Hello(_)));
        assert!(matches!(f.server_state, ServerState::Hello(_)));
        assert_eq!(
            f.bytes[0] + f.bytes[1],
            (hello.len() + server.len() + 1400) as u64
        );
        t.segment(&seg(true, ACK, 2001, 0, b""), 9);
        assert!(t.is_empty(), "a late ACK starts no flow");
    }

    #[test]
    fn fast_open_hello_in_the_syn() {
        let hello = fixture("curl_tls13");
        let mut t = FlowTable::new(Limits::default());
        t.segment(&seg(true, SYN, 41, 0, &hello), 1);
        assert_eq!(t.stats.client_hellos, 1);
    }

    #[test]
    fn no_syn_client_is_the_hello_sender() {
        let hello = fixture("curl_tls10");
        let mut t = FlowTable::new(Limits::default());
        t.segment(&seg(true, ACK, 77, 0, &hello), 1);
        t.finish_all();
        let f = t.ended.pop().unwrap();
        assert_eq!(f.client, Some(0));
        assert!(matches!(f.client_state, ClientState::Hello(_)));
        // Mid-stream bulk in both directions: nothing to report.
        let mut t = FlowTable::new(Limits::default());
        t.segment(&seg(true, ACK, 77, 0, &[0x17; 100]), 1);
        t.segment(&seg(false, ACK, 7, 0, &[0x17; 100]), 2);
        t.finish_all();
        let f = t.ended.pop().unwrap();
        assert_eq!(f.client_state, ClientState::NotTls);
        assert!(!f.collecting);
    }

    #[test]
    fn cut_off_hello_idle_expiry_and_eviction() {
        let hello = fixture("curl_tls13");
        let mut t = FlowTable::new(Limits {
            max_flows: 4,
            idle: 10,
            buffer_budget: 1 << 20,
        });
        t.segment(&seg(true, SYN, 0, 0, b""), 1);
        t.segment(&seg(true, ACK, 1, 0, &hello[..50]), 2);
        // A new SYN on the same ports: a new connection.
        t.segment(&seg(true, SYN, 500, 0, b""), 3);
        let f = t.ended.remove(0);
        assert_eq!(f.end, End::Reused);
        assert_eq!(
            f.client_state,
            ClientState::Waiting,
            "cut off: still waiting"
        );
        assert_eq!(f.bytes[0], 50);
        // Much later: the sweep ends the idle flow.
        t.segment(&seg(false, ACK, 0, 0, b"x"), 3_000_000_000);
        assert_eq!(t.ended.remove(0).end, End::Idle);
        for port in 1..10u16 {
            let mut s = seg(true, SYN, 0, 0, b"");
            s.src.port = port;
            t.segment(&s, 3_000_000_001);
        }
        assert!(t.len() <= 4);
        assert!(t.stats.evicted > 0);
    }

    #[test]
    fn buffer_budget_starves_the_oldest() {
        let mut t = FlowTable::new(Limits {
            max_flows: 100,
            idle: 1 << 40,
            buffer_budget: 4096,
        });
        // Hello prefixes that never complete (a record of 16000 bytes announced).
        for port in 1..20u16 {
            let mut s = seg(true, SYN, 0, 0, b"");
            s.src.port = port;
            t.segment(&s, i64::from(port));
            let mut d = seg(
                true,
                ACK,
                1,
                0,
                &[0x16, 3, 1, 0x3e, 0x80, 1, 0, 0x3e, 0x7c, 3, 3],
            );
            d.src.port = port;
            t.segment(&d, i64::from(port));
            let mut more = seg(true, ACK, 12, 0, &[0; 1000]);
            more.src.port = port;
            t.segment(&more, i64::from(port));
        }
        assert!(t.stats.starved > 0);
        assert!(t.buffered <= 4096 + 2048, "{}", t.buffered);
    }
}
