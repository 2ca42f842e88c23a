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
// the conn's netFD, checked by name and type; on a Go whose net keeps them
// differently it does nothing (TestForgetAddrs then fails). It reports
// whether it dropped them. Called before the connection is started, while
// nothing else uses nc.
func forgetAddrs(nc net.Conn) bool {
	tc, ok := nc.(*net.TCPConn)
	if !ok || tc == nil {
		return false
	}
	c := reflect.ValueOf(tc).Elem().FieldByName("conn")
	if c.Kind() != reflect.Struct {
		return false
	}
	fd := c.FieldByName("fd")
	if fd.Kind() != reflect.Pointer || fd.IsNil() || fd.Elem().Kind() != reflect.Struct {
		return false
	}
	addr := reflect.TypeFor[net.Addr]()
	var fields [2]reflect.Value
	for i, name := range []string{"laddr", "raddr"} {
		f := fd.Elem().FieldByName(name)
		if !f.IsValid() || f.Type() != addr {
			return false
		}
		fields[i] = f
	}
	for _, f := range fields {
		reflect.NewAt(addr, unsafe.Pointer(f.UnsafeAddr())).Elem().SetZero()
	}
	return true
}
