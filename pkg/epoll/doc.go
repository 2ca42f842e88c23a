// Package epoll is an epoll instance whose waiter an eventfd wakes (Linux only):
// what pkg/relay's shards and pkg/park's idle-connection pollers block on.
package epoll
