//! Files shared by the plugins and the overlay daemon: one way to replace a file atomically without ever
//! writing through a planted symbolic link ([`atomic`]), and the `subnet.env` format the daemon writes and
//! the flannel plugin reads ([`subnet_env`]).

pub mod atomic;
pub mod subnet_env;

pub use atomic::{create_missing_dirs, write_atomically, FileError};
pub use subnet_env::{SubnetEnv, SubnetEnvError};
