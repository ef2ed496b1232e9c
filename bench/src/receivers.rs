//! The receiving sockets of a load run, held by worker processes (`bench load-receiver`, this
//! same binary) instead of the generator itself.
//!
//! One process may hold at most 20,000 open files here, so a single generator tops out near
//! 17,000 receivers beside its senders; the box holds several times that across processes.
//! Each worker opens its share of sockets, records every delivery's latency in HDR histograms
//! per measured window and per second, reports its delivered counts as it goes (the generator's
//! drain waits on them), and hands its histograms back when told to stop.
//!
//! Time: a slot is microseconds since the run's origin, which the generator passes as wall-clock
//! microseconds since the Unix epoch. Every process here reads the same system clock, so
//! `receipt - slot` means the same in all of them; only a clock step during a run would skew it
//! (slewing moves every reading alike).
//!
//! The conversation is JSON lines: the share, then windows to measure and a stop on the
//! worker's stdin; `opened`, `progress` and `done` on its stdout.

use std::collections::BTreeMap;
use std::ops::Range;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Flavor, Socket};
use crate::frames::read_event;
use crate::report;

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Significant digits of the per-window histograms and of the per-second timeline (a second's
/// p99 needs less precision, and a soak has hundreds of seconds).
const WINDOW_DIGITS: u8 = 3;
const TIMELINE_DIGITS: u8 = 2;

/// Receiving sockets per worker process: one process may hold 20,000 open files here.
pub const SOCKETS_PER_PROCESS: usize = 15_000;

/// A histogram as (value, count) pairs: small, lossless at the histogram's own precision.
type Counts = Vec<(u64, u64)>;

fn counts(h: &Histogram<u64>) -> Counts {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn add(h: &mut Histogram<u64>, counts: &Counts) {
    for &(value, count) in counts {
        h.saturating_record_n(value, count);
    }
}

/// One socket to open: the room's index in the run, the URL, and the room to join.
pub type Target = (usize, String, Option<String>);

/// What a worker is given: its sockets and the run's clock.
#[derive(Serialize, Deserialize)]
struct Share {
    flavor: Flavor,
    origin_unix_us: u64,
    concurrency: usize,
    sockets: Vec<Target>,
}

/// Generator to worker.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Order {
    /// Measure deliveries whose slot falls in `start..end` (windows are numbered in order).
    Measure {
        start: u64,
        end: u64,
    },
    Stop,
}

/// Worker to generator.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum News {
    Opened {
        /// Sockets held per room index.
        per_room: Vec<(usize, u64)>,
        failures: usize,
        first_error: Option<String>,
        connect_us: Vec<u64>,
    },
    /// Deliveries so far, per window.
    Progress {
        delivered: Vec<u64>,
    },
    Done(Report),
}

/// Everything a worker's sockets saw.
#[derive(Serialize, Deserialize, Default)]
struct Report {
    windows: Vec<(u64, Counts)>,
    timeline: BTreeMap<u64, Counts>,
    out_of_order: u64,
    resyncs: u64,
    closes: BTreeMap<String, u64>,
}

/// A measured window inside a worker.
struct Window {
    slots: Range<u64>,
    latency: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
}

/// What a worker's readers add to.
struct Reception {
    origin_unix_us: u64,
    windows: RwLock<Vec<Arc<Window>>>,
    /// Delivery latency per second of slot.
    timeline: Mutex<BTreeMap<u64, Histogram<u64>>>,
    /// Events whose seq was not the socket's last + 1 (a gap or a repeat); ours only.
    out_of_order: AtomicU64,
    resyncs: AtomicU64,
    /// Sockets the server closed, by close code (or `error` / `eof` without a close frame).
    closes: Mutex<BTreeMap<String, u64>>,
}

impl Reception {
    fn now_us(&self) -> u64 {
        unix_us().saturating_sub(self.origin_unix_us)
    }

    fn window(&self, slot: u64) -> Option<Arc<Window>> {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        windows
            .iter()
            .rev()
            .find(|w| w.slots.contains(&slot))
            .cloned()
    }

    fn delivered(&self) -> Vec<u64> {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        windows
            .iter()
            .map(|w| w.delivered.load(Ordering::Relaxed))
            .collect()
    }

    fn closed(&self, how: String) {
        *lock(&self.closes).entry(how).or_default() += 1;
    }

    fn report(&self) -> Report {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        Report {
            windows: windows
                .iter()
                .map(|w| {
                    (
                        w.delivered.load(Ordering::Relaxed),
                        counts(&lock(&w.latency)),
                    )
                })
                .collect(),
            timeline: lock(&self.timeline)
                .iter()
                .map(|(second, h)| (*second, counts(h)))
                .collect(),
            out_of_order: self.out_of_order.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            closes: lock(&self.closes).clone(),
        }
    }
}

/// Batches a reader's latencies so the shared histograms are locked once per 64 events.
struct Batch(Vec<(Arc<Window>, u64, u64)>);

impl Batch {
    fn flush(&mut self, reception: &Reception) {
        if self.0.is_empty() {
            return;
        }
        let mut timeline = lock(&reception.timeline);
        for (window, slot, latency) in self.0.drain(..) {
            lock(&window.latency).saturating_record(latency);
            timeline
                .entry(slot / 1_000_000)
                .or_insert_with(|| report::histogram(TIMELINE_DIGITS))
                .saturating_record(latency);
        }
    }
}

async fn read(
    flavor: Flavor,
    mut socket: Socket,
    reception: Arc<Reception>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Batch(Vec::with_capacity(64));
    let mut last_seq: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            frame = socket.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                let now = reception.now_us();
                let text = text.as_str();
                if let Some((seq, slot)) = read_event(flavor, text) {
                    if let Some(seq) = seq {
                        if last_seq.is_some_and(|l| seq != l + 1) {
                            reception.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        last_seq = Some(seq);
                    }
                    if let Some(window) = reception.window(slot) {
                        window.delivered.fetch_add(1, Ordering::Relaxed);
                        batch.0.push((window, slot, now.saturating_sub(slot)));
                    }
                } else if text == "2" {
                    // Engine.IO ping: unanswered, the peer drops the socket.
                    if socket.send(Message::text("3")).await.is_err() {
                        reception.closed("error".into());
                        break;
                    }
                } else if text.contains(r#""type":"resync""#) {
                    reception.resyncs.fetch_add(1, Ordering::Relaxed);
                }
                if batch.0.len() == batch.0.capacity() {
                    batch.flush(&reception);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                reception.closed(frame.map_or("no code".into(), |f| u16::from(f.code).to_string()));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                reception.closed("error".into());
                break;
            }
            None => {
                reception.closed("eof".into());
                break;
            }
        }
    }
    batch.flush(&reception);
}

fn say(news: &News) -> anyhow::Result<()> {
    // One line per message; `println!` holds stdout's lock for the whole line.
    println!("{}", serde_json::to_string(news)?);
    Ok(())
}

/// The worker: opens its share, reports, reads until told to stop, hands its histograms back.
pub async fn worker() -> anyhow::Result<()> {
    let mut orders = BufReader::new(tokio::io::stdin()).lines();
    let share: Share =
        serde_json::from_str(&orders.next_line().await?.context("no share on stdin")?)?;
    let opened = client::open_all(share.flavor, share.sockets.into_iter(), share.concurrency).await;
    let mut per_room: BTreeMap<usize, u64> = BTreeMap::new();
    for (room, _) in &opened.sockets {
        *per_room.entry(*room).or_default() += 1;
    }
    say(&News::Opened {
        per_room: per_room.into_iter().collect(),
        failures: opened.failures,
        first_error: opened.first_error,
        connect_us: opened.connect_us,
    })?;

    let reception = Arc::new(Reception {
        origin_unix_us: share.origin_unix_us,
        windows: RwLock::new(Vec::new()),
        timeline: Mutex::new(BTreeMap::new()),
        out_of_order: AtomicU64::new(0),
        resyncs: AtomicU64::new(0),
        closes: Mutex::new(BTreeMap::new()),
    });
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = opened
        .sockets
        .into_iter()
        .map(|(_, s)| tokio::spawn(read(share.flavor, s, reception.clone(), stopped.clone())))
        .collect();
    let progress = {
        let reception = reception.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let delivered = reception.delivered();
                if !delivered.is_empty() && say(&News::Progress { delivered }).is_err() {
                    break;
                }
            }
        })
    };
    // A closed stdin (the generator gone) stops the worker as a `stop` would.
    while let Some(line) = orders.next_line().await? {
        match serde_json::from_str(&line)? {
            Order::Measure { start, end } => reception
                .windows
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(Window {
                    slots: start..end,
                    latency: Mutex::new(report::histogram(WINDOW_DIGITS)),
                    delivered: AtomicU64::new(0),
                })),
            Order::Stop => break,
        }
    }
    let _ = stop.send(true);
    for reader in readers {
        let _ = reader.await;
    }
    progress.abort();
    say(&News::Done(reception.report()))
}

/// What the workers hold once every socket was tried.
pub struct Opened {
    /// Sockets held per room index.
    pub per_room: BTreeMap<usize, u64>,
    pub held: usize,
    pub failures: usize,
    pub first_error: Option<String>,
    pub connect: Histogram<u64>,
}

/// Everything the receiving sockets saw, merged over the workers.
pub struct Received {
    /// Deliveries and latency per measured window, in the order they were measured.
    pub windows: Vec<(u64, Histogram<u64>)>,
    /// Latency per second of slot.
    pub timeline: BTreeMap<u64, Histogram<u64>>,
    pub out_of_order: u64,
    pub resyncs: u64,
    pub closes: BTreeMap<String, u64>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    progress: Arc<Mutex<Vec<u64>>>,
    done: oneshot::Receiver<anyhow::Result<Report>>,
}

/// The generator's handle on its receiving workers.
pub struct Receivers {
    workers: Vec<Worker>,
    pub pids: Vec<u32>,
}

impl Receivers {
    /// Starts workers of at most [`SOCKETS_PER_PROCESS`] sockets each, with `concurrency`
    /// connections being set up at once in all, and waits until every socket was tried.
    pub async fn start(
        flavor: Flavor,
        origin_unix_us: u64,
        sockets: Vec<Target>,
        concurrency: usize,
    ) -> anyhow::Result<(Self, Opened)> {
        let exe = std::env::current_exe()?;
        let chunks: Vec<Vec<Target>> = sockets
            .chunks(SOCKETS_PER_PROCESS)
            .map(<[Target]>::to_vec)
            .collect();
        let per_worker_concurrency = (concurrency / chunks.len().max(1)).max(1);
        let mut receivers = Receivers {
            workers: Vec::new(),
            pids: Vec::new(),
        };
        let mut openings = Vec::new();
        for chunk in chunks {
            let mut child = tokio::process::Command::new(&exe)
                .arg("load-receiver")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a receiving worker")?;
            receivers
                .pids
                .push(child.id().context("a receiving worker exited at once")?);
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let share = Share {
                flavor,
                origin_unix_us,
                concurrency: per_worker_concurrency,
                sockets: chunk,
            };
            stdin
                .write_all(format!("{}\n", serde_json::to_string(&share)?).as_bytes())
                .await?;
            let progress = Arc::new(Mutex::new(Vec::new()));
            let (opened_tx, opened_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            tokio::spawn(listen(stdout, progress.clone(), opened_tx, done_tx));
            openings.push(opened_rx);
            receivers.workers.push(Worker {
                child,
                stdin,
                progress,
                done: done_rx,
            });
        }
        let mut opened = Opened {
            per_room: BTreeMap::new(),
            held: 0,
            failures: 0,
            first_error: None,
            connect: report::histogram(3),
        };
        for opening in openings {
            let news = tokio::time::timeout(Duration::from_secs(900), opening)
                .await
                .context("a receiving worker did not report within 15 min")?
                .context("a receiving worker ended without reporting")??;
            let News::Opened {
                per_room,
                failures,
                first_error,
                connect_us,
            } = news
            else {
                anyhow::bail!("a receiving worker's first line was not `opened`");
            };
            for (room, n) in per_room {
                *opened.per_room.entry(room).or_default() += n;
                opened.held += n as usize;
            }
            opened.failures += failures;
            if opened.first_error.is_none() {
                opened.first_error = first_error;
            }
            for us in connect_us {
                opened.connect.saturating_record(us);
            }
        }
        Ok((receivers, opened))
    }

    async fn tell(&mut self, order: &Order) -> anyhow::Result<()> {
        let line = format!("{}\n", serde_json::to_string(order)?);
        for worker in &mut self.workers {
            worker.stdin.write_all(line.as_bytes()).await?;
        }
        Ok(())
    }

    /// Measures deliveries of the slots in `slots` (the next window, in order).
    pub async fn measure(&mut self, slots: &Range<u64>) -> anyhow::Result<()> {
        self.tell(&Order::Measure {
            start: slots.start,
            end: slots.end,
        })
        .await
    }

    /// Deliveries reported so far for the windows numbered in `windows`.
    pub fn delivered(&self, windows: Range<usize>) -> u64 {
        self.workers
            .iter()
            .map(|w| {
                let progress = lock(&w.progress);
                windows.clone().filter_map(|i| progress.get(i)).sum::<u64>()
            })
            .sum()
    }

    /// Stops every worker and merges what their sockets saw.
    pub async fn finish(mut self) -> anyhow::Result<Received> {
        self.tell(&Order::Stop).await?;
        let mut received = Received {
            windows: Vec::new(),
            timeline: BTreeMap::new(),
            out_of_order: 0,
            resyncs: 0,
            closes: BTreeMap::new(),
        };
        for mut worker in self.workers {
            let seen = tokio::time::timeout(Duration::from_secs(120), &mut worker.done)
                .await
                .context("a receiving worker did not report within 2 min of stopping")?
                .context("a receiving worker ended without its report")??;
            for (i, (delivered, latency)) in seen.windows.iter().enumerate() {
                if received.windows.len() <= i {
                    received.windows.push((0, report::histogram(WINDOW_DIGITS)));
                }
                received.windows[i].0 += delivered;
                add(&mut received.windows[i].1, latency);
            }
            for (second, latency) in &seen.timeline {
                let h = received
                    .timeline
                    .entry(*second)
                    .or_insert_with(|| report::histogram(TIMELINE_DIGITS));
                add(h, latency);
            }
            received.out_of_order += seen.out_of_order;
            received.resyncs += seen.resyncs;
            for (how, n) in seen.closes {
                *received.closes.entry(how).or_default() += n;
            }
            drop(worker.stdin);
            if tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
                .await
                .is_err()
            {
                let _ = worker.child.kill().await;
            }
        }
        Ok(received)
    }
}

/// Reads a worker's news: the first `opened`, progress as it comes, the final `done`.
async fn listen(
    stdout: tokio::process::ChildStdout,
    progress: Arc<Mutex<Vec<u64>>>,
    opened: oneshot::Sender<anyhow::Result<News>>,
    done: oneshot::Sender<anyhow::Result<Report>>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut opened = Some(opened);
    let outcome = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Err(anyhow::anyhow!("a receiving worker closed its output")),
            Err(e) => break Err(e.into()),
        };
        match serde_json::from_str::<News>(&line) {
            Ok(News::Progress { delivered }) => *lock(&progress) = delivered,
            Ok(News::Done(report)) => break Ok(report),
            Ok(news) => {
                if let Some(opened) = opened.take() {
                    let _ = opened.send(Ok(news));
                }
            }
            Err(e) => break Err(anyhow::anyhow!("a receiving worker said {line:.200}: {e}")),
        }
    };
    if let (Err(e), Some(opened)) = (&outcome, opened.take()) {
        let _ = opened.send(Err(anyhow::anyhow!("{e:#}")));
    }
    let _ = done.send(outcome);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
