//! Frames on a QUIC stream: a 4-byte big-endian length, then that much JSON
//! (`peercache_core::peer`). The length is checked before anything is allocated.

use iroh::endpoint::{RecvStream, SendStream};
use peercache_core::peer::{decode_frame, encode_frame, frame_len};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PeerError;

/// Writes one frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), PeerError> {
    send.write_all(&encode_frame(msg))
        .await
        .map_err(|e| PeerError::Stream(e.to_string()))
}

/// Reads one frame (at most `peercache_core::peer::MAX_FRAME` bytes).
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, PeerError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| PeerError::Stream(e.to_string()))?;
    let len = frame_len(prefix)?;
    let mut json = vec![0u8; len];
    recv.read_exact(&mut json)
        .await
        .map_err(|e| PeerError::Stream(e.to_string()))?;
    Ok(decode_frame(&json)?)
}
