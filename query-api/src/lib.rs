//! The read API (issue #4): history paging, search, rooms, members, presence and unread counts
//! served from the read models. Nothing is implemented here yet.
