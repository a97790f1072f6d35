//! The client: bootstraps the route list and reads and writes objects in groups.
