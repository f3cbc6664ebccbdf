//! Framing: how every message crosses a byte stream (Unix socket or QUIC stream).
//!
//! ```text
//! +----------------+---------+------------------------+
//! | len: u32 (BE)  | version | postcard body          |
//! +----------------+---------+------------------------+
//!                  <------------- len bytes ---------->
//! ```
//!
//! `len` counts the version byte and the body and may not exceed the limit given to the
//! reader (at most [`FRAME_LEN_MAX`]). The limit is checked before any body byte is read or
//! any buffer allocated, so a peer cannot make us allocate more than the limit. Every
//! failure is a typed [`FrameError`]; nothing here panics on input.

use serde::Serialize;
use serde::de::DeserializeOwned;
#[cfg(feature = "io")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::limits::FRAME_LEN_MAX;

/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;

/// Size of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

#[cfg(feature = "io")]
/// A frame body up to this length is read into a buffer of its size at once; a longer
/// one starts with a buffer this large that grows as the bytes arrive.
const READ_CHUNK_LEN: usize = 64 * 1024;

/// The capacity a frame is encoded into before it grows.
const ENCODE_CAPACITY: usize = 256;

/// Why a frame could not be read or written. No variant changes any state: the frame is
/// dropped and, on a connection, the connection is closed by the caller.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared or encoded length exceeds the limit; nothing was read past the header.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The input ended inside a frame.
    #[error("truncated frame: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    /// The frame has length zero, so it does not even carry a version byte.
    #[error("empty frame")]
    Empty,
    /// The frame was written by a protocol version this build does not speak.
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    /// The body is not a valid encoding of the expected message.
    #[error("undecodable frame body: {0}")]
    Decode(String),
    /// The body decoded but left bytes unread, which a well-formed frame never does.
    #[error("frame body has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The message could not be encoded (a programmer error in a `Serialize` impl).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The underlying stream failed.
    #[error("i/o error on the stream: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the peer closed the stream cleanly between frames.
    pub fn is_clean_close(&self) -> bool {
        matches!(self, FrameError::Truncated { got: 0, .. })
    }
}

/// Encodes `message` as one complete frame (header included).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    encode_limited(message, FRAME_LEN_MAX)
}

/// Encodes `message` as one complete frame, refusing bodies above `len_max`.
pub fn encode_limited<T: Serialize>(message: &T, len_max: usize) -> Result<Vec<u8>, FrameError> {
    // Room for most messages at once: growing a small vector byte by byte reallocates.
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.push(FRAME_VERSION);
    let mut out =
        postcard::to_extend(message, out).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_LEN;
    if len > len_max {
        return Err(FrameError::TooLarge { len, max: len_max });
    }
    let len_u32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max: len_max })?;
    out[..FRAME_HEADER_LEN].copy_from_slice(&len_u32.to_be_bytes());
    Ok(out)
}

/// Reads the declared body length from a header, checking it against `len_max`.
pub fn body_len(header: [u8; FRAME_HEADER_LEN], len_max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > len_max {
        return Err(FrameError::TooLarge { len, max: len_max });
    }
    Ok(len)
}

/// Decodes a frame body (version byte + postcard), without the length prefix.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let (message, remainder) =
        postcard::take_from_bytes::<T>(rest).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !remainder.is_empty() {
        return Err(FrameError::TrailingBytes(remainder.len()));
    }
    Ok(message)
}

/// Decodes the first complete frame in `input`, returning the message and the number of
/// bytes it occupied. A frame cut short yields [`FrameError::Truncated`].
pub fn decode<T: DeserializeOwned>(input: &[u8], len_max: usize) -> Result<(T, usize), FrameError> {
    let Some(header) = input.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_LEN,
            got: input.len(),
        });
    };
    let len = body_len(*header, len_max)?;
    let total = FRAME_HEADER_LEN + len;
    let Some(frame) = input.get(FRAME_HEADER_LEN..total) else {
        return Err(FrameError::Truncated {
            needed: total,
            got: input.len(),
        });
    };
    Ok((decode_body(frame)?, total))
}

/// Reads one frame from `reader`. Returns `Ok(None)` when the stream ends cleanly before
/// a new frame starts; a stream that ends inside a frame is [`FrameError::Truncated`].
#[cfg(feature = "io")]
pub async fn read_frame<R, T>(reader: &mut R, len_max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match read_raw_frame(reader, len_max).await? {
        Some(frame) => decode_body(&frame[FRAME_HEADER_LEN..]).map(Some),
        None => Ok(None),
    }
}

/// Reads one frame from `reader` as it came, header included, without decoding it (a
/// relay forwards the very bytes it received). `Ok(None)` and errors as [`read_frame`].
#[cfg(feature = "io")]
pub async fn read_raw_frame<R>(
    reader: &mut R,
    len_max: usize,
) -> Result<Option<Vec<u8>>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                needed: FRAME_HEADER_LEN,
                got,
            });
        }
        got += n;
    }
    let len = body_len(header, len_max)?;
    let truncated = |got: usize| FrameError::Truncated {
        needed: FRAME_HEADER_LEN + len,
        got: FRAME_HEADER_LEN + got,
    };
    if len <= READ_CHUNK_LEN {
        let mut frame = vec![0u8; FRAME_HEADER_LEN + len];
        frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
        let mut got = 0;
        while got < len {
            match reader.read(&mut frame[FRAME_HEADER_LEN + got..]).await? {
                0 => return Err(truncated(got)),
                n => got += n,
            }
        }
        return Ok(Some(frame));
    }
    // Grow the buffer as bytes arrive rather than trusting the declared length, so that a
    // peer announcing a large frame and then stalling holds little memory.
    let mut frame = Vec::with_capacity(READ_CHUNK_LEN);
    frame.extend_from_slice(&header);
    let got = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await?;
    if got < len {
        return Err(truncated(got));
    }
    Ok(Some(frame))
}

/// Writes `message` as one frame and flushes it.
#[cfg(feature = "io")]
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(message)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Sample {
        A(u64),
        B { name: String, bytes: Vec<u8> },
    }

    #[test]
    fn round_trip_and_consumed_length() {
        let message = Sample::B {
            name: "m3".into(),
            bytes: vec![1, 2, 3],
        };
        let mut bytes = encode(&message).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(&encode(&Sample::A(7)).unwrap());
        let (decoded, used) = decode::<Sample>(&bytes, FRAME_LEN_MAX).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(used, len);
        let (second, _) = decode::<Sample>(&bytes[used..], FRAME_LEN_MAX).unwrap();
        assert_eq!(second, Sample::A(7));
    }

    #[test]
    fn oversized_header_is_refused_before_reading_the_body() {
        let header = ((FRAME_LEN_MAX + 1) as u32).to_be_bytes();
        let err = decode::<Sample>(&header, FRAME_LEN_MAX).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == FRAME_LEN_MAX + 1 && max == FRAME_LEN_MAX)
        );
    }

    #[test]
    fn oversized_message_is_refused_at_encode() {
        let message = Sample::B {
            name: String::new(),
            bytes: vec![0; 64],
        };
        assert!(matches!(
            encode_limited(&message, 16),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn wrong_version_trailing_bytes_and_empty_frames_are_typed_errors() {
        let mut bytes = encode(&Sample::A(1)).unwrap();
        bytes[FRAME_HEADER_LEN] = 9;
        assert!(matches!(
            decode::<Sample>(&bytes, FRAME_LEN_MAX),
            Err(FrameError::UnsupportedVersion(9))
        ));

        let mut bytes = encode(&Sample::A(1)).unwrap();
        bytes.push(0);
        let len = (bytes.len() - FRAME_HEADER_LEN) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode::<Sample>(&bytes, FRAME_LEN_MAX),
            Err(FrameError::TrailingBytes(1))
        ));

        assert!(matches!(
            decode::<Sample>(&[0, 0, 0, 0], FRAME_LEN_MAX),
            Err(FrameError::Empty)
        ));
    }

    #[tokio::test]
    async fn async_reader_distinguishes_clean_close_from_truncation() {
        let bytes = encode(&Sample::A(42)).unwrap();
        let mut whole = &bytes[..];
        assert_eq!(
            read_frame::<_, Sample>(&mut whole, FRAME_LEN_MAX)
                .await
                .unwrap(),
            Some(Sample::A(42))
        );
        assert_eq!(
            read_frame::<_, Sample>(&mut whole, FRAME_LEN_MAX)
                .await
                .unwrap(),
            None
        );
        for cut in 1..bytes.len() {
            let mut part = &bytes[..cut];
            let err = read_frame::<_, Sample>(&mut part, FRAME_LEN_MAX)
                .await
                .unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_frame_longer_than_a_read_chunk_is_read_whole_or_found_truncated() {
        let message = Sample::B {
            name: "big".into(),
            bytes: vec![7; 3 * READ_CHUNK_LEN],
        };
        let bytes = encode(&message).unwrap();
        let mut whole = &bytes[..];
        assert_eq!(
            read_frame::<_, Sample>(&mut whole, FRAME_LEN_MAX)
                .await
                .unwrap(),
            Some(message)
        );
        let mut part = &bytes[..bytes.len() - 1];
        let err = read_frame::<_, Sample>(&mut part, FRAME_LEN_MAX)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { needed, got } if got + 1 == needed),
            "{err}"
        );
    }

    proptest! {
        // Random bytes never panic the decoder; they decode or give a typed error.
        #[test]
        fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&input, FRAME_LEN_MAX);
            if !input.is_empty() {
                let _ = decode_body::<Sample>(&input);
            }
        }

        // Every prefix of a valid frame is reported as truncated, never decoded wrongly.
        #[test]
        fn every_truncation_is_detected(value in any::<u64>(), name in ".{0,40}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for message in [Sample::A(value), Sample::B { name: name.clone(), bytes: bytes.clone() }] {
                let encoded = encode(&message).unwrap();
                for cut in 0..encoded.len() {
                    let is_truncated = matches!(decode::<Sample>(&encoded[..cut], FRAME_LEN_MAX), Err(FrameError::Truncated { .. }));
                    prop_assert!(is_truncated);
                }
                prop_assert_eq!(decode::<Sample>(&encoded, FRAME_LEN_MAX).unwrap().0, message);
            }
        }
    }
}
