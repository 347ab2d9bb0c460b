package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The same binary's figures moved by a factor of ten between two VMs of
// the same kind (docs/benchmarks.md, "A slower machine of the same kind"),
// for both servers alike. machineProbe measures, just before a run and
// while the server is idle, the operations a notification's cost is made
// of, so that results taken on different machines or days can be told
// apart by more than the CPU's name.
type machineProbe struct {
	// SyscallNS is the mean cost of a system call that does nothing.
	SyscallNS float64 `json:"syscall_ns"`
	// WakeRTTBusyUS is the median round trip of one byte between two
	// threads pinned to two CPUs through pipes, back to back.
	WakeRTTBusyUS float64 `json:"wake_rtt_busy_us,omitempty"`
	// WakeRTTIdleUS is the same with each side idle for 200 µs first: it
	// adds waking a CPU that has halted.
	WakeRTTIdleUS float64 `json:"wake_rtt_idle_us,omitempty"`
	// FdatasyncUS is the median time of a 4 KiB pwrite and fdatasync of a
	// file in the temporary directory.
	FdatasyncUS float64 `json:"fdatasync_us"`
}

const (
	probeSyscalls  = 200_000
	probeBusyTrips = 5_000
	probeIdleTrips = 500
	probeIdleGap   = 200 * time.Microsecond
	probeSyncs     = 300
)

// probeMachine takes about a second. The wake figures are left out on a
// machine that gives this process fewer than two CPUs.
func probeMachine() (*machineProbe, error) {
	p := &machineProbe{SyscallNS: syscallCost()}
	cpus, err := allowedCPUs()
	if err != nil {
		return nil, err
	}
	if len(cpus) >= 2 {
		if p.WakeRTTBusyUS, err = wakeRoundTrip(cpus[0], cpus[1], probeBusyTrips, 0); err != nil {
			return nil, err
		}
		if p.WakeRTTIdleUS, err = wakeRoundTrip(cpus[0], cpus[1], probeIdleTrips, probeIdleGap); err != nil {
			return nil, err
		}
	}
	if p.FdatasyncUS, err = fdatasyncCost(probeSyncs); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *machineProbe) String() string {
	return fmt.Sprintf("syscall %.0f ns, wake round trip %.1f µs busy / %.1f µs after %v idle, 4 KiB write+fdatasync %.0f µs",
		p.SyscallNS, p.WakeRTTBusyUS, p.WakeRTTIdleUS, probeIdleGap, p.FdatasyncUS)
}

func syscallCost() float64 {
	start := time.Now()
	for range probeSyscalls {
		syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
	}
	return float64(time.Since(start).Nanoseconds()) / probeSyscalls
}

func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var cpus []int
	for i := range runtime.NumCPU() * 4 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus, nil
}

// wakeRoundTrip bounces one byte between a thread on CPU a and one on CPU
// b through two pipes, trips times, and returns the median round trip in
// microseconds. Blocking reads: each side sleeps in the kernel until the
// other wakes it, which is what a wake-up across CPUs costs.
func wakeRoundTrip(a, b, trips int, gap time.Duration) (float64, error) {
	var ping, pong [2]int
	if err := unix.Pipe2(ping[:], unix.O_CLOEXEC); err != nil {
		return 0, fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(ping[0])
	defer unix.Close(ping[1])
	if err := unix.Pipe2(pong[:], unix.O_CLOEXEC); err != nil {
		return 0, fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(pong[0])
	defer unix.Close(pong[1])

	echoed := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread ends with the goroutine: its pinning goes with it
		if err := pin(b); err != nil {
			echoed <- err
			return
		}
		var buf [1]byte
		for range trips {
			if err := readFull(ping[0], buf[:]); err != nil {
				echoed <- err
				return
			}
			if _, err := unix.Write(pong[1], buf[:]); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()

	rtts := make([]float64, 0, trips)
	err := func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var was unix.CPUSet
		if err := unix.SchedGetaffinity(0, &was); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &was)
		if err := pin(a); err != nil {
			return err
		}
		var buf [1]byte
		for range trips {
			if gap > 0 {
				time.Sleep(gap)
			}
			start := time.Now()
			if _, err := unix.Write(ping[1], buf[:]); err != nil {
				return err
			}
			if err := readFull(pong[0], buf[:]); err != nil {
				return err
			}
			rtts = append(rtts, float64(time.Since(start).Nanoseconds())/1e3)
		}
		return nil
	}()
	if err != nil {
		return 0, fmt.Errorf("wake probe: %w", err)
	}
	if err := <-echoed; err != nil {
		return 0, fmt.Errorf("wake probe: %w", err)
	}
	return median(rtts), nil
}

func pin(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("sched_setaffinity: %w", err)
	}
	return nil
}

func readFull(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Read(fd, p)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n == 0:
			return errors.New("pipe closed")
		}
		p = p[n:]
	}
	return nil
}

func fdatasyncCost(n int) (float64, error) {
	f, err := os.CreateTemp("", "kronos-bench-probe-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	page := make([]byte, 4096)
	times := make([]float64, 0, n)
	for i := range n {
		page[0] = byte(i)
		start := time.Now()
		if _, err := f.WriteAt(page, int64(i%64)*4096); err != nil {
			return 0, err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return 0, fmt.Errorf("fdatasync: %w", err)
		}
		times = append(times, float64(time.Since(start).Nanoseconds())/1e3)
	}
	return median(times), nil
}

// runMachineProbe is `kronos-bench machine-probe`: the probe alone, as
// JSON on standard output.
func runMachineProbe(args []string) error {
	fs := flag.NewFlagSet("machine-probe", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := probeMachine()
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, p)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}
