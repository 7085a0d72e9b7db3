//! The session's gRPC codec: prost's, with small buffers.
//!
//! tonic gives every stream an encoding and a decoding buffer of 8 KiB by default, reserved
//! when the stream opens. A session's messages are tiny (a heartbeat or an ack: tens of
//! bytes), and a server holds tens of thousands of sessions, so those two buffers alone were
//! about 16 KiB of every session's memory. [`SessionCodec`] starts them at
//! [`BUFFER_BYTES`]; a larger message (an assignment with configuration files) grows them
//! as it needs.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encoding and decoding buffers.
pub const BUFFER_BYTES: usize = 512;
/// Encoded bytes after which an encoding stream yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// prost encoding and decoding with [`BUFFER_BYTES`] buffers (the generated session client
/// and server use it: `tonic_prost_build::Builder::codec_path`).
#[derive(Debug, Clone)]
pub struct SessionCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SessionCodec<T, U> {
    fn default() -> Self {
        SessionCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for SessionCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
