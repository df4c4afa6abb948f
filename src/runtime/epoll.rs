//! epoll backend on mio (to be written).
