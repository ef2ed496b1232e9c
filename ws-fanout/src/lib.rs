//! The WebSocket tier (issue #5): streams room events to subscribed sockets in `seq` order with
//! resume, typing and presence. Nothing is implemented here yet.
