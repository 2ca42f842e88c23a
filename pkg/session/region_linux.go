package session

import "syscall"

// mapRegion maps n bytes of private anonymous memory, reserving no swap:
// only the pages written to become resident.
func mapRegion(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
}

func unmapRegion(b []byte) { syscall.Munmap(b) }

// releasePage gives a page's memory back: it reads as zeros and is not
// resident until written again.
func releasePage(b []byte) { syscall.Madvise(b, syscall.MADV_DONTNEED) }
