package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// send-floor measures what the kernel alone charges for one small message
// written to a loopback TCP connection, when a reader in another process
// waits for it on epoll as the load tool's workers do. On loopback the
// writer's system call also runs the receiver's TCP input and wakes the
// reader, so a notification costs a node at least this much CPU, however
// little its own code does: the floor under the node's figures
// (docs/benchmarks.md, "What bounds the marks here").
//
//	kronos-bench send-floor --conns 19000 --rate 45000 --duration 10s

// floorResult is one send-floor run.
type floorResult struct {
	Conns     int     `json:"conns"`
	Bytes     int     `json:"bytes"`
	RateAsked float64 `json:"rate_asked"`
	Seconds   float64 `json:"seconds"`
	Sent      int64   `json:"sent"`
	// WouldBlock counts writes refused because a socket was full; such a
	// message is not sent (with a reader that keeps up there are none).
	WouldBlock int64 `json:"would_block"`
	// The writer: one thread, one write(2) per message, no work of its own.
	SenderUserUS   float64 `json:"sender_user_us_per_send"`
	SenderSystemUS float64 `json:"sender_system_us_per_send"`
	SenderCores    float64 `json:"sender_cores"`
	// The reader process, from the first write to the last byte read.
	Received    int64         `json:"bytes_received"`
	ReaderUS    float64       `json:"reader_us_per_send"`
	ReaderCores float64       `json:"reader_cores"`
	Probe       *machineProbe `json:"machine_probe,omitempty"`
}

func (r *floorResult) String() string {
	return fmt.Sprintf("%d connections, %d-byte messages: %d sent in %.1fs = %.0f/s (%d would block)\n"+
		"  writer: %.2f µs per message (user %.2f, system %.2f), %.2f cores\n"+
		"  reader: %.2f µs per message, %.2f cores; %d of %d bytes received",
		r.Conns, r.Bytes, r.Sent, r.Seconds, float64(r.Sent)/r.Seconds, r.WouldBlock,
		r.SenderUserUS+r.SenderSystemUS, r.SenderUserUS, r.SenderSystemUS, r.SenderCores,
		r.ReaderUS, r.ReaderCores, r.Received, r.Sent*int64(r.Bytes))
}

// floorReport is what the reader process prints when told to stop.
type floorReport struct {
	Bytes      int64   `json:"bytes"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

func runSendFloor(args []string) error {
	fs := flag.NewFlagSet("send-floor", flag.ContinueOnError)
	conns := fs.Int("conns", 19000, "connections, written to in turn (each end needs a descriptor in its own process)")
	rate := fs.Float64("rate", 45000, "messages per second, in all")
	duration := fs.Duration("duration", 10*time.Second, "how long to write")
	size := fs.Int("bytes", 154, "bytes per message (a Kronos notification as the load tool receives it averages 154)")
	out := fs.String("out", "", "results file (JSON); a summary goes to standard output either way")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *conns <= 0 || *rate <= 0 || *duration <= 0 || *size <= 0 {
		return errors.New("--conns, --rate, --duration and --bytes must be positive")
	}
	probe, err := probeMachine()
	if err != nil {
		return err
	}
	r, err := sendFloor(*conns, *rate, *duration, *size)
	if err != nil {
		return err
	}
	r.Probe = probe
	fmt.Println(r)
	fmt.Println("  machine:", probe)
	if *out == "" {
		return nil
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(*out, append(data, '\n'), 0o644)
}

func sendFloor(conns int, rate float64, duration time.Duration, size int) (*floorResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// One P, as the load tool's workers run.
	cmd := exec.Command(self, "send-floor-reader", "--addr", ln.Addr().String(), "--conns", strconv.Itoa(conns))
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	toReader, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	fromReader, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer cmd.Wait()
	defer toReader.Close() // the reader ends when its input does

	fds := make([]int, 0, conns)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	accepted := make(chan error, 1)
	go func() {
		for range conns {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			fc, err := detach(c)
			if err != nil {
				accepted <- err
				return
			}
			fds = append(fds, fc.fd)
		}
		accepted <- nil
	}()
	replies := bufio.NewReader(fromReader)
	readyErr := expectLine(replies, "ready")
	if readyErr != nil {
		ln.Close() // a reader that failed dials no more: stop waiting for them
	}
	acceptErr := <-accepted
	if readyErr != nil {
		return nil, fmt.Errorf("reader: %w", readyErr)
	}
	if acceptErr != nil {
		return nil, acceptErr
	}
	if _, err := io.WriteString(toReader, "start\n"); err != nil {
		return nil, err
	}
	if err := expectLine(replies, "started"); err != nil {
		return nil, fmt.Errorf("reader: %w", err)
	}

	r := &floorResult{Conns: conns, Bytes: size, RateAsked: rate}
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = 'x'
	}
	runtime.LockOSThread()
	user0, sys0 := processCPUSplit()
	start := time.Now()
	for next := 0; ; {
		elapsed := time.Since(start)
		if elapsed >= duration {
			break
		}
		for due := int64(rate * elapsed.Seconds()); r.Sent+r.WouldBlock < due; next = (next + 1) % conns {
			if _, err := unix.Write(fds[next], msg); err != nil {
				if !errors.Is(err, unix.EAGAIN) {
					runtime.UnlockOSThread()
					return nil, fmt.Errorf("write: %w", err)
				}
				r.WouldBlock++
				continue
			}
			r.Sent++
		}
		time.Sleep(time.Millisecond) // a tick: the writes of a millisecond go out together
	}
	r.Seconds = time.Since(start).Seconds()
	user1, sys1 := processCPUSplit()
	runtime.UnlockOSThread()

	if _, err := fmt.Fprintf(toReader, "stop %d\n", r.Sent*int64(size)); err != nil {
		return nil, err
	}
	var rep floorReport
	if err := json.NewDecoder(replies).Decode(&rep); err != nil {
		return nil, fmt.Errorf("reader's report: %w", err)
	}
	if r.Sent > 0 {
		n := float64(r.Sent)
		r.SenderUserUS = (user1 - user0) * 1e6 / n
		r.SenderSystemUS = (sys1 - sys0) * 1e6 / n
		r.ReaderUS = rep.CPUSeconds * 1e6 / n
	}
	r.SenderCores = (user1 - user0 + sys1 - sys0) / r.Seconds
	r.ReaderCores = rep.CPUSeconds / r.Seconds
	r.Received = rep.Bytes
	return r, nil
}

// processCPUSplit is the process's user and system CPU seconds so far. The
// writer's thread does nearly all of it; the Go runtime's own threads are
// counted too, as they are in a node's figures.
func processCPUSplit() (user, system float64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()).Seconds(), time.Duration(ru.Stime.Nano()).Seconds()
}

func expectLine(r *bufio.Reader, want string) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(line); got != want {
		return fmt.Errorf("said %q, not %q", got, want)
	}
	return nil
}

// runSendFloorReader is the reading end: it dials the connections, takes
// them out of Go's poller (detach) and reads them with one epoll instance,
// level-triggered, one read per ready socket, as a load tool worker does.
// On its input, "start" marks the first write and "stop BYTES" asks for a
// report once BYTES more have arrived (10 s at most).
func runSendFloorReader(args []string) error {
	fs := flag.NewFlagSet("send-floor-reader", flag.ContinueOnError)
	addr := fs.String("addr", "", "the writer's address")
	conns := fs.Int("conns", 0, "connections to dial")
	if err := fs.Parse(args); err != nil {
		return err
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	for range *conns {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			return err
		}
		fc, err := detach(c)
		if err != nil {
			return err
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fc.fd)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fc.fd, &ev); err != nil {
			return fmt.Errorf("epoll add: %w", err)
		}
	}
	var received atomic.Int64
	go func() {
		events := make([]unix.EpollEvent, 256)
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.EpollWait(epfd, events, -1)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			for _, ev := range events[:n] {
				if got, err := unix.Read(int(ev.Fd), buf); err == nil && got > 0 {
					received.Add(int64(got))
				} else if err == nil {
					unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, int(ev.Fd), nil) // the writer closed it
				}
			}
		}
	}()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	var cpu0 float64
	var bytes0 int64
	for in.Scan() {
		switch fields := strings.Fields(in.Text()); {
		case len(fields) == 1 && fields[0] == "start":
			cpu0, bytes0 = processCPUSeconds(), received.Load()
			fmt.Println("started")
		case len(fields) == 2 && fields[0] == "stop":
			want, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return fmt.Errorf("stop: %w", err)
			}
			for deadline := time.Now().Add(10 * time.Second); received.Load()-bytes0 < want && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			rep := floorReport{Bytes: received.Load() - bytes0, CPUSeconds: processCPUSeconds() - cpu0}
			if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown command %q", in.Text())
		}
	}
	return in.Err()
}
