//! The machine's bare Unix-socket round trip: what a lookup through any local socket
//! costs before the server does any work. One thread serves every connection with epoll
//! (through mio) and answers each request at once; one thread drives the same closed
//! loop as the workloads. Both sleep in epoll when they have nothing to do.
//!
//! Sizes are those of a Corral lookup: a 12-byte request, an 80-byte answer.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream as StdStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};

use crate::runner::new_histogram;

const REQUEST: usize = 12;
const ANSWER: usize = 80;

/// p50 of the round trip, in µs, with `connections` clients for `measure` after a warm-up.
pub fn round_trip_p50_us(connections: usize, measure: Duration) -> anyhow::Result<u64> {
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..connections {
        let (client, server) = StdStream::pair()?;
        client.set_nonblocking(true)?;
        server.set_nonblocking(true)?;
        clients.push(UnixStream::from_std(client));
        servers.push(UnixStream::from_std(server));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || serve(servers, &stop))
    };
    let measured = drive(clients, measure);
    stop.store(true, Ordering::Relaxed);
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the probe's server thread panicked"))?;
    served?;
    measured
}

fn serve(mut streams: Vec<UnixStream>, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    for (i, stream) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(stream, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(256);
    let mut buffer = [0u8; 4096];
    let answer = [0u8; ANSWER];
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in &events {
            let stream = &mut streams[event.token().0];
            // A connection ends when the driver closes it, answers unread: that is no error.
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        if (0..n / REQUEST).any(|_| stream.write_all(&answer).is_err()) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

fn drive(mut streams: Vec<UnixStream>, measure: Duration) -> anyhow::Result<u64> {
    let mut poll = Poll::new()?;
    let request = [0u8; REQUEST];
    let mut sent = Vec::with_capacity(streams.len());
    for (i, stream) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(stream, Token(i), Interest::READABLE)?;
        sent.push(Instant::now());
        stream.write_all(&request)?;
    }
    let mut received = vec![0usize; streams.len()];
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + measure;
    let mut histogram = new_histogram();
    let mut events = Events::with_capacity(256);
    let mut buffer = [0u8; 4096];
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in &events {
            let i = event.token().0;
            loop {
                match streams[i].read(&mut buffer) {
                    Ok(0) => anyhow::bail!("the probe's server closed a connection"),
                    Ok(n) => received[i] += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            while received[i] >= ANSWER {
                received[i] -= ANSWER;
                let now = Instant::now();
                if sent[i] >= start && now <= end {
                    let _ = histogram.record((now - sent[i]).as_micros().max(1) as u64);
                }
                sent[i] = now;
                streams[i].write_all(&request)?;
            }
        }
    }
    anyhow::ensure!(!histogram.is_empty(), "no round trip completed");
    Ok(histogram.value_at_quantile(0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_complete_at_every_concurrency() {
        for connections in [1, 16, 128] {
            let p50 = round_trip_p50_us(connections, Duration::from_millis(100)).expect("probe");
            assert!(p50 > 0 && p50 < 1_000_000, "{connections}: {p50} µs");
        }
    }
}
