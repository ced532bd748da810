//! Length-prefixed framing over tokio streams.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ProtoError, MAX_FRAME};

/// Reads one frame into `buf` (cleared first) and returns it: the bytes
/// after the 4-byte length prefix, ready for
/// [`decode_request`](crate::decode_request) /
/// [`decode_response`](crate::decode_response).
///
/// Returns `Ok(None)` on a clean EOF (before the first byte of a prefix); an
/// EOF anywhere inside a frame is `ProtoError::Io(UnexpectedEof)`.
///
/// A length of 0 or above [`MAX_FRAME`] fails with
/// [`ProtoError::FrameLength`] before any of the body is read or any memory
/// reserved; the stream is then out of sync and must be closed. Even for a
/// valid length, `buf` only grows as bytes actually arrive, so a peer that
/// announces 16 MiB and sends 1 byte costs 1 byte, not 16 MiB.
///
/// Not cancel-safe: if the future is dropped mid-frame, the bytes already
/// consumed are lost and the stream must be closed. There is no read
/// timeout here; a server should wrap this call in one (or an idle timeout)
/// so a slow peer cannot hold a connection open forever.
pub async fn read_frame<'b, R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &'b mut Vec<u8>,
) -> Result<Option<&'b [u8]>, ProtoError> {
    match read_frame_len(r).await? {
        Some(len) => read_frame_body(r, len, buf).await.map(Some),
        None => Ok(None),
    }
}

/// The first half of [`read_frame`]: reads a frame's length prefix and checks it (`1 ≤ len ≤`
/// [`MAX_FRAME`], else [`ProtoError::FrameLength`]); `Ok(None)` on a clean EOF. Lets a server
/// reserve memory for the frame (or wait until it can) before reading its body with
/// [`read_frame_body`].
pub async fn read_frame_len<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Option<usize>, ProtoError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let dst = prefix.get_mut(filled..).unwrap_or_default();
        let n = r.read(dst).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(eof("connection closed inside a length prefix"));
        }
        filled += n;
    }
    let len = u32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(l) if (1..=MAX_FRAME).contains(&l) => Ok(Some(l)),
        _ => Err(ProtoError::FrameLength { len: u64::from(len) }),
    }
}

/// The second half of [`read_frame`]: reads the `len` bytes of a frame's body (`len` as
/// [`read_frame_len`] returned it) into `buf` (cleared first) and returns them. `buf` grows
/// only as bytes arrive.
pub async fn read_frame_body<'b, R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    len: usize,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], ProtoError> {
    if !(1..=MAX_FRAME).contains(&len) {
        return Err(ProtoError::FrameLength { len: len as u64 });
    }
    buf.clear();
    let got = (&mut *r).take(len as u64).read_to_end(buf).await?;
    if got != len {
        return Err(eof("connection closed inside a frame body"));
    }
    Ok(buf.as_slice())
}

/// Writes one complete frame as produced by
/// [`encode_request`](crate::encode_request) /
/// [`encode_response`](crate::encode_response) (length prefix included),
/// then flushes.
///
/// The prefix is checked against the slice first: writing a frame whose
/// prefix disagrees with its length would desynchronise the stream for every
/// later frame, so that is refused with [`ProtoError::FrameLength`].
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, frame: &[u8]) -> Result<(), ProtoError> {
    let body_len = frame.len().saturating_sub(4);
    let consistent = match frame.first_chunk::<4>() {
        Some(prefix) => {
            let declared = u32::from_be_bytes(*prefix);
            usize::try_from(declared).is_ok_and(|d| d == body_len) && (1..=MAX_FRAME).contains(&body_len)
        }
        None => false,
    };
    if !consistent {
        return Err(ProtoError::FrameLength { len: body_len as u64 });
    }
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

fn eof(msg: &'static str) -> ProtoError {
    ProtoError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, msg))
}
