// Package epoll is an epoll instance whose waiter an eventfd wakes: what the
// balancer's relay shards and the node's idle-connection pollers block on.
// Linux only.
package epoll
