package session

import (
	"net"
	"reflect"
	"unsafe"
)

// forgetAddrs drops the local and remote addresses a *net.TCPConn keeps
// for LocalAddr and RemoteAddr: two TCPAddr and the sockaddrs their IPs
// slice, 160 bytes of a connection's heap for its whole life, which nothing
// reads once the upgrade is done (both then return nil, as for a closed
// conn). net has no API for it, so it clears the two unexported fields of
// the conn's netFD, found once by name and type (addrFields); on a Go whose
// net keeps them differently it does nothing (TestForgetAddrs then fails).
// It reports whether it dropped them. Called before the connection is
// started, while nothing else uses nc.
func forgetAddrs(nc net.Conn) bool {
	tc, ok := nc.(*net.TCPConn)
	if !ok || tc == nil || addrFields == nil {
		return false
	}
	fd := reflect.ValueOf(tc).Elem().FieldByIndex(addrFields.fd)
	if fd.IsNil() {
		return false
	}
	for _, i := range addrFields.addrs {
		f := fd.Elem().Field(i)
		reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetZero()
	}
	return true
}

// addrFields locates the netFD pointer in net.TCPConn and its laddr and
// raddr fields; nil when this Go's net does not have them as expected.
var addrFields = func() *struct {
	fd    []int
	addrs [2]int
} {
	c, ok := reflect.TypeFor[net.TCPConn]().FieldByName("conn")
	if !ok || c.Type.Kind() != reflect.Struct {
		return nil
	}
	fd, ok := c.Type.FieldByName("fd")
	if !ok || fd.Type.Kind() != reflect.Pointer || fd.Type.Elem().Kind() != reflect.Struct {
		return nil
	}
	loc := &struct {
		fd    []int
		addrs [2]int
	}{fd: append(append([]int{}, c.Index...), fd.Index...)}
	addr := reflect.TypeFor[net.Addr]()
	for i, name := range []string{"laddr", "raddr"} {
		f, ok := fd.Type.Elem().FieldByName(name)
		if !ok || f.Type != addr || len(f.Index) != 1 {
			return nil
		}
		loc.addrs[i] = f.Index[0]
	}
	return loc
}()
