//! The thread that forks every shim.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked a process exits, not when its
//! process does. A shim forked from a tokio blocking thread (which exits after a few idle
//! seconds) or from a worker thread given up by `block_in_place` would be told its agent died
//! while the agent lives on, and would kill its task. So every shim is forked from this one
//! dedicated thread, which lives exactly as long as the supervisor and its task actors: its
//! exit is the supervisor's death, and then the shims *should* kill their tasks.

use std::io;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Request {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Handle to the spawner thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Spawner {
    requests: mpsc::Sender<Request>,
}

impl Spawner {
    /// Start the spawner thread. Children are registered with `runtime` (pipes, reaping).
    pub(crate) fn start(runtime: Handle) -> io::Result<Spawner> {
        let (requests, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("warden-shim-spawner".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                for mut request in rx {
                    // The requester may have gone away meanwhile; the child then sees its
                    // control pipe closed and exits.
                    let _ = request.reply.send(request.command.spawn());
                }
            })?;
        Ok(Spawner { requests })
    }

    /// Spawn `command` from the spawner thread.
    pub(crate) async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { command, reply })
            .map_err(|_| io::Error::other("the shim spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the shim spawner thread is gone"))?
    }
}
