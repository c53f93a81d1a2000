//! Live updates: `GET /ui/api/live` is a server-sent event stream that
//! says `change` whenever the fleet changed (a heartbeat, a run report, a
//! step in some appliance's history, an operator's action); the fleet and
//! appliance pages then fetch what they show again.
//!
//! Changes are found by polling the store's change stamp once a second,
//! only while someone listens or lately asked for the fleet (then the
//! fleet's rows are recomputed here, off the requests' path): a heartbeat may have reached another
//! server on the same PostgreSQL database, so watching this process's own
//! requests would miss it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::auth::{authed, may_view};
use super::fleet::FleetCache;
use super::{ApiResult, UiState};
use crate::store::{ChangeStamp, Store};

/// How often the store is asked whether anything changed.
const POLL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<ChangeStamp>,
    /// Streams end when the server stops (or its drain would wait on them).
    stop: CancellationToken,
}

impl Live {
    /// Starts the poller; it ends with `stop`. While the fleet page is in
    /// use it also recomputes the fleet's rows when the fleet changed,
    /// before telling the pages, so their next request finds them fresh.
    pub fn start(store: Arc<dyn Store>, fleet: Arc<FleetCache>, stop: CancellationToken) -> Live {
        let (tx, _) = broadcast::channel(16);
        let sender = tx.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut last: Option<ChangeStamp> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let listening = sender.receiver_count() > 0;
                if !listening && !fleet.wanted() {
                    last = None;
                    continue;
                }
                let (s, f) = (store.clone(), fleet.clone());
                let polled = tokio::task::spawn_blocking(move || {
                    let stamp = s.change_stamp()?;
                    if f.wanted() {
                        f.refresh(s.as_ref())
                            .map_err(|e| crate::store::StoreError::Invalid(e.body.to_string()))?;
                    }
                    Ok::<_, crate::store::StoreError>(stamp)
                })
                .await;
                let stamp = match polled {
                    Ok(Ok(stamp)) => stamp,
                    Ok(Err(e)) => {
                        debug!(error = %e, "panel: change stamp unavailable");
                        continue;
                    }
                    Err(_) => continue,
                };
                if listening && last.is_some_and(|l| l != stamp) {
                    let _ = sender.send(stamp);
                }
                last = Some(stamp);
            }
        });
        Live { tx, stop: stopped }
    }
}

/// `GET /ui/api/live`: `event: change` on every change of the fleet; the
/// stream ends when the session does.
pub async fn events(
    State(state): State<UiState>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let a = authed(&state, &headers).await?;
    may_view(&a)?;
    let rx = state.live.tx.subscribe();
    let sessions = state.sessions.clone();
    let token = a.token;
    let stop = state.live.stop.clone();
    let first = Some(Event::default().event("hello").data("listening"));
    let stream = futures_util::stream::unfold((rx, first), move |(mut rx, first)| {
        let sessions = sessions.clone();
        let token = token.clone();
        let stop = stop.clone();
        async move {
            if let Some(hello) = first {
                return Some((Ok(hello), (rx, None)));
            }
            loop {
                let got = tokio::select! {
                    got = rx.recv() => got,
                    _ = stop.cancelled() => return None,
                };
                match got {
                    Ok(stamp) => {
                        sessions.get(&token)?;
                        // What moved, for a page that only cares about some.
                        let data = serde_json::to_string(&stamp).unwrap_or_default();
                        return Some((Ok(Event::default().event("change").data(data)), (rx, None)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
