//! Files shared by the plugins and the overlay daemon: one way to replace a file atomically without ever
//! writing through a planted symbolic link ([`atomic`]), and the `subnet.env` format the daemon writes and
//! the flannel plugin reads ([`subnet_env`]), and installing files onto a node from a container image
//! ([`install`], the `twill-install` program of the Kubernetes DaemonSet).

pub mod atomic;
pub mod install;
pub mod subnet_env;

pub use atomic::{create_missing_dirs, write_atomically, FileError};
pub use subnet_env::{SubnetEnv, SubnetEnvError};
