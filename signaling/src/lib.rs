//! Call signaling: offer/answer/ICE relay, call lifecycle events and coturn REST-API
//! credentials. Nothing is implemented here yet.
