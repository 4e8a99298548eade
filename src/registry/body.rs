//! Reading what a registry, a mirror, a token realm or a redirect target sends, under two rules
//! every answer obeys whoever sends it:
//! - a hard cap on the bytes kept, checked as each chunk arrives, so an endless body costs at
//!   most the cap in memory (error bodies, token responses, manifests);
//! - [`MinProgress`]: the response head must arrive within one window of the request, and the
//!   body must then bring at least so many bytes in every window, so a server trickling a byte
//!   a second cannot hold a pull for days. Blob streams obey it too.

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::request::network;
use super::RegistryError;

/// The least progress a response must make: its head within one `window` of the request, then
/// at least `bytes` of body in every `window` until it ends.
///
/// The default, 64 KiB in every 2 minutes (about 550 bytes a second), is far below any real
/// link: a 20 GB image over a 1 Mbit/s line brings 15 MiB per window, 240 times the minimum, so
/// it pulls however long it takes; a registry that waits up to 2 minutes before answering (a
/// pull-through cache filling) is waited for. A server below the rate is cut off at the end of
/// the window, and the request is retried like a broken connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinProgress {
    /// Body bytes every window must bring.
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

impl MinProgress {
    /// 64 KiB in every 2 minutes.
    pub const DEFAULT: MinProgress = MinProgress {
        bytes: 64 << 10,
        window: Duration::from_secs(120),
    };
}

impl Default for MinProgress {
    fn default() -> Self {
        MinProgress::DEFAULT
    }
}

impl fmt::Display for MinProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes every {}",
            self.bytes,
            humantime::format_duration(self.window)
        )
    }
}

impl FromStr for MinProgress {
    type Err = String;

    /// `BYTES/DURATION`: `64KiB/2m`, `1MB/30s`, `512/10s`.
    fn from_str(s: &str) -> Result<MinProgress, String> {
        let usage = || format!("{s:?}: expected BYTES/DURATION, like 64KiB/2m");
        let (bytes, window) = s.split_once('/').ok_or_else(usage)?;
        let bytes = match bytes.trim().parse::<crate::space::Reserve>() {
            Ok(crate::space::Reserve::Bytes(n)) if n > 0 => n,
            _ => return Err(usage()),
        };
        let window = humantime::parse_duration(window.trim()).map_err(|_| usage())?;
        if window.is_zero() {
            return Err(format!("{s:?}: the window must be longer than 0s"));
        }
        Ok(MinProgress { bytes, window })
    }
}

/// A request's claim on one of its host's connection slots, held from before it is sent until
/// its body has been read (or dropped): carried in the response's extensions, then by
/// [`Watched`]. Empty where no slot was asked for.
#[derive(Clone)]
pub(super) struct ConnectionSlot {
    /// Released when the last clone is dropped.
    _permit: Arc<OwnedSemaphorePermit>,
}

impl ConnectionSlot {
    pub(super) fn new(permit: OwnedSemaphorePermit) -> ConnectionSlot {
        ConnectionSlot {
            _permit: Arc::new(permit),
        }
    }
}

/// A response body as a stream of chunks that ends with [`RegistryError::Stalled`] when a
/// window passes without the bytes [`MinProgress`] asks for, and with
/// [`RegistryError::Network`] when the connection breaks.
pub(super) struct Watched {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    progress: MinProgress,
    /// The end of the current window.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Bytes received in the current window.
    received: u64,
    /// `false` once the stream has ended (cleanly or not).
    live: bool,
    registry: String,
    action: String,
    /// The response's connection slot, given back when the body ends.
    slot: Option<ConnectionSlot>,
}

impl Watched {
    /// Watches `response`'s body; `registry` and `action` name it in errors.
    pub fn new(
        mut response: reqwest::Response,
        progress: MinProgress,
        registry: &str,
        action: &str,
    ) -> Watched {
        let slot = response.extensions_mut().remove::<ConnectionSlot>();
        Watched {
            slot,
            inner: Box::pin(response.bytes_stream()),
            progress,
            deadline: Box::pin(tokio::time::sleep(progress.window)),
            received: 0,
            live: true,
            registry: registry.to_string(),
            action: action.to_string(),
        }
    }

    /// The body has ended, cleanly or not: its connection slot is free again.
    fn end(&mut self) {
        self.live = false;
        self.slot = None;
    }

    /// The window has ended: the next one starts if this one brought enough, else the stream
    /// ends stalled.
    fn window_ended(&mut self) -> Option<RegistryError> {
        if self.received >= self.progress.bytes {
            self.received = 0;
            let next = tokio::time::Instant::now() + self.progress.window;
            self.deadline.as_mut().reset(next);
            return None;
        }
        self.end();
        Some(RegistryError::Stalled {
            registry: self.registry.clone(),
            action: self.action.clone(),
            received: self.received,
            progress: self.progress,
        })
    }
}

impl Stream for Watched {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.live {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received = this.received.saturating_add(chunk.len() as u64);
                if this.deadline.is_elapsed() {
                    if let Some(stalled) = this.window_ended() {
                        return Poll::Ready(Some(Err(stalled)));
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end();
                Poll::Ready(Some(Err(network(&this.registry, &this.action, e))))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                // Windows that brought enough roll over until one is still running (its timer
                // then wakes this task) or one ends short.
                while this.deadline.as_mut().poll(cx).is_ready() {
                    if let Some(stalled) = this.window_ended() {
                        return Poll::Ready(Some(Err(stalled)));
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// A body read whole, up to a cap.
pub(super) struct Capped {
    /// At most the cap's bytes.
    pub bytes: Vec<u8>,
    /// The body had more than the cap; the rest was not read.
    pub truncated: bool,
}

/// Reads `response`'s body chunk by chunk, keeping at most `cap` bytes: reading stops at the
/// first byte past the cap, so an endless body costs at most the cap and one chunk in memory.
pub(super) async fn read_capped(
    response: reqwest::Response,
    cap: usize,
    progress: MinProgress,
    registry: &str,
    action: &str,
) -> Result<Capped, RegistryError> {
    use futures_util::StreamExt as _;
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(Capped {
            bytes: Vec::new(),
            truncated: true,
        });
    }
    let mut body = Watched::new(response, progress, registry, action);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Capped {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Capped {
        bytes,
        truncated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_progress_reads_as_bytes_per_window() {
        assert_eq!("64KiB/2m".parse::<MinProgress>(), Ok(MinProgress::DEFAULT));
        assert_eq!(
            "1000/10s".parse::<MinProgress>(),
            Ok(MinProgress {
                bytes: 1000,
                window: Duration::from_secs(10)
            })
        );
        for bad in ["64KiB", "0/1s", "10%/1s", "1KiB/0s", "1KiB/soon"] {
            assert!(bad.parse::<MinProgress>().is_err(), "{bad}");
        }
    }
}
