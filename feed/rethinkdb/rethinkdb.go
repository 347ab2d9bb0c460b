package rethinkdb

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	r "gopkg.in/rethinkdb/rethinkdb-go.v6"

	"github.com/kronos-sync/kronos-server/feed"
)

// The RethinkDB store. RethinkDB is atomic per document only, so the data
// is laid out for it (docs/rethinkdb.md has the whole design):
//
//   - users:   {id: user_id, version, devices, tasks}
//   - devices: {id: device_id, user_id}
//   - tasks:   one document per task, id [user_id, task_id], index user_id.
//     It holds the task as the client sent it (a string: RethinkDB would
//     reorder an object's keys and turn its numbers into doubles), and the
//     version and device of the write that produced it, so the change the
//     feed sees is a complete notification. rev grows with every write of
//     the document. A delete is a tombstone (deleted: true) so the feed
//     still sees who deleted and with which version.
//
// Each node holds a few changefeeds, one per shard of users, over
// tasks.getAll(users…, {index: "user_id"}).changes().
const (
	rdbUsers   = "users"
	rdbDevices = "devices"
	rdbTasks   = "tasks"
	rdbByUser  = "user_id"
)

type rdbUser struct {
	ID      string `rethinkdb:"id"`
	Version string `rethinkdb:"version"`
	Devices int    `rethinkdb:"devices"`
	Tasks   int    `rethinkdb:"tasks"`
}

type rdbDevice struct {
	ID     string `rethinkdb:"id"`
	UserID string `rethinkdb:"user_id"`
}

type rdbTask struct {
	ID      []any  `rethinkdb:"id"`
	UserID  string `rethinkdb:"user_id"`
	TaskID  int64  `rethinkdb:"task_id"`
	Task    string `rethinkdb:"task"`
	Deleted bool   `rethinkdb:"deleted"`
	Version string `rethinkdb:"version"`
	Device  string `rethinkdb:"device_id"`
	Rev     int64  `rethinkdb:"rev"`
}

func taskDocID(user string, id int64) []any { return []any{user, id} }

// Store is the RethinkDB store and this node's feed on it.
type Store = rdbStore

type rdbStore struct {
	exec   r.QueryExecutor
	db     string
	limits feed.Limits
	log    zerolog.Logger
	sinkMu sync.Mutex
	sink   feed.Sink
	m      *feed.StoreMetrics
	feeds  *rdbFeeds
	closed atomic.Bool
	once   sync.Once
	close  func() error
}

// rethinkConfig is what a rethinkdb:// URL says.
type rethinkConfig struct {
	opts r.ConnectOpts
}

// parseRethinkURL reads
// rethinkdb://[user[:password]@]host[:port][,host2[:port]…][/database]
// with options tls=true, tls_ca=FILE, tls_server_name=NAME,
// tls_skip_verify=true, max_open=N, max_idle=N, discover=true,
// timeout=DURATION.
func parseRethinkURL(raw string) (rethinkConfig, error) {
	rest, ok := strings.CutPrefix(raw, "rethinkdb://")
	if !ok {
		return rethinkConfig{}, errors.New("want rethinkdb://")
	}
	var cfg rethinkConfig
	cfg.opts.Database = "kronos"
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		userinfo := rest[:at]
		rest = rest[at+1:]
		user, pass, _ := strings.Cut(userinfo, ":")
		var err error
		if cfg.opts.Username, err = url.PathUnescape(user); err != nil {
			return cfg, err
		}
		if cfg.opts.Password, err = url.PathUnescape(pass); err != nil {
			return cfg, err
		}
	}
	rest, query, _ := strings.Cut(rest, "?")
	hosts, db, _ := strings.Cut(rest, "/")
	if db != "" {
		cfg.opts.Database = db
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			continue
		}
		if !strings.Contains(h, ":") {
			h += ":28015"
		}
		cfg.opts.Addresses = append(cfg.opts.Addresses, h)
	}
	if len(cfg.opts.Addresses) == 0 {
		return cfg, errors.New("no host")
	}
	params, err := url.ParseQuery(query)
	if err != nil {
		return cfg, err
	}
	var tlsCfg *tls.Config
	for key, values := range params {
		v := values[len(values)-1]
		switch key {
		case "tls":
			if v == "true" {
				tlsCfg = cmpTLS(tlsCfg)
			}
		case "tls_ca":
			pem, err := os.ReadFile(v)
			if err != nil {
				return cfg, fmt.Errorf("tls_ca: %w", err)
			}
			tlsCfg = cmpTLS(tlsCfg)
			tlsCfg.RootCAs = x509.NewCertPool()
			if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("tls_ca %s: no certificate", v)
			}
		case "tls_server_name":
			tlsCfg = cmpTLS(tlsCfg)
			tlsCfg.ServerName = v
		case "tls_skip_verify":
			tlsCfg = cmpTLS(tlsCfg)
			tlsCfg.InsecureSkipVerify = v == "true"
		case "max_open", "max_idle":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return cfg, fmt.Errorf("%s=%q: want a positive number", key, v)
			}
			if key == "max_open" {
				cfg.opts.MaxOpen = n
			} else {
				cfg.opts.MaxIdle = n
			}
		case "discover":
			cfg.opts.DiscoverHosts = v == "true"
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return cfg, fmt.Errorf("timeout=%q: %w", v, err)
			}
			cfg.opts.Timeout = d
		default:
			return cfg, fmt.Errorf("unknown option %q", key)
		}
	}
	cfg.opts.TLSConfig = tlsCfg
	return cfg, nil
}

func cmpTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return c
}

// Open connects to RethinkDB, sets up the schema and starts the node's
// feeds.
func Open(ctx context.Context, rawURL string, opts feed.Options) (*Store, error) {
	cfg, err := parseRethinkURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("rethinkdb store %s: %w", feed.RedactURL(rawURL), err)
	}
	session, err := r.Connect(cfg.opts)
	if err != nil {
		return nil, fmt.Errorf("rethinkdb store %s: %w", feed.RedactURL(rawURL), err)
	}
	s, err := newRethinkStore(ctx, session, cfg.opts.Database, opts)
	if err != nil {
		session.Close()
		return nil, fmt.Errorf("rethinkdb store %s: %w", feed.RedactURL(rawURL), err)
	}
	s.close = func() error { return session.Close() }
	return s, nil
}

// newRethinkStore runs on any executor: a session, or the driver's mock.
func newRethinkStore(ctx context.Context, exec r.QueryExecutor, db string, opts feed.Options) (*rdbStore, error) {
	opts.Limits.SetDefaults()
	s := &rdbStore{
		exec:   exec,
		db:     db,
		limits: opts.Limits,
		log:    opts.Logger.With().Str("store", "rethinkdb").Logger(),
		m:      feed.NewStoreMetrics(opts.Registerer, "rethinkdb"),
		close:  func() error { return nil },
	}
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	s.feeds = newRDBFeeds(s)
	return s, nil
}

func (s *rdbStore) table(name string) r.Term { return r.DB(s.db).Table(name) }

// setup creates what is missing, tolerating nodes that do the same at the
// same time, and waits until the index is ready.
func (s *rdbStore) setup(ctx context.Context) error {
	run := func(t r.Term) error {
		err := t.Exec(s.exec, r.ExecOpts{Context: ctx})
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil
		}
		return err
	}
	if err := run(r.DBCreate(s.db)); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	for _, t := range []string{rdbUsers, rdbDevices, rdbTasks} {
		if err := run(r.DB(s.db).TableCreate(t)); err != nil {
			return fmt.Errorf("create table %s: %w", t, err)
		}
	}
	if err := run(s.table(rdbTasks).IndexCreate(rdbByUser)); err != nil {
		return fmt.Errorf("create index: %w", err)
	}
	if err := s.table(rdbTasks).IndexWait(rdbByUser).Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
		return fmt.Errorf("wait for index: %w", err)
	}
	return nil
}

func (s *rdbStore) Subscribe(sink feed.Sink) {
	s.sinkMu.Lock()
	s.sink = sink
	s.sinkMu.Unlock()
}

func (s *rdbStore) deliver(changes []feed.Change) {
	if s.closed.Load() {
		return
	}
	s.sinkMu.Lock()
	sink := s.sink
	s.sinkMu.Unlock()
	if sink != nil {
		sink(changes)
	}
}

func (s *rdbStore) Ready(ctx context.Context) error {
	if !s.exec.IsConnected() {
		return errors.New("not connected")
	}
	if n := s.feeds.broken(); n > 0 {
		return fmt.Errorf("%d changefeeds are down", n)
	}
	return nil
}

func (s *rdbStore) Close() error {
	var err error
	s.once.Do(func() {
		s.closed.Store(true)
		s.feeds.stop()
		err = s.close()
	})
	return err
}

// one reads a single document; found is false when it does not exist.
func (s *rdbStore) one(ctx context.Context, t r.Term, v any) (found bool, err error) {
	cur, err := t.Run(s.exec, r.RunOpts{Context: ctx})
	if err != nil {
		return false, err
	}
	defer cur.Close()
	if cur.IsNil() {
		return false, nil
	}
	err = cur.One(v)
	if errors.Is(err, r.ErrEmptyResult) {
		return false, nil
	}
	return err == nil, err
}

func (s *rdbStore) Login(ctx context.Context, userID, deviceID string) (feed.Session, error) {
	start := time.Now()
	sess, err := s.login(ctx, userID, deviceID)
	s.m.Observe("login", start, err)
	return sess, err
}

func (s *rdbStore) login(ctx context.Context, userID, deviceID string) (feed.Session, error) {
	sess := feed.Session{UserID: userID}
	var user rdbUser
	if userID == "" {
		sess.UserID, sess.NewUser = feed.NewID(), true
		user = rdbUser{ID: sess.UserID, Version: "-1"}
		if err := s.table(rdbUsers).Insert(user).Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return feed.Session{}, err
		}
	} else if found, err := s.one(ctx, s.table(rdbUsers).Get(userID), &user); err != nil {
		return feed.Session{}, err
	} else if !found {
		return feed.Session{}, feed.ErrUserNotFound()
	}
	var owner feed.DeviceOwner
	if deviceID != "" {
		var dev rdbDevice
		found, err := s.one(ctx, s.table(rdbDevices).Get(deviceID), &dev)
		if err != nil {
			return feed.Session{}, err
		}
		owner = feed.DeviceOwner{Found: found, UserID: dev.UserID}
	}
	if err := feed.ResolveDevice(&sess, deviceID, owner); err != nil {
		return feed.Session{}, err
	}
	if sess.NewDevice {
		// Not atomic with the check: two devices registering at the same
		// moment may pass the limit by one.
		if user.Devices >= s.limits.MaxDevicesPerUser {
			return feed.Session{}, feed.ErrTooManyDevices(s.limits.MaxDevicesPerUser)
		}
		res, err := s.table(rdbDevices).Insert(rdbDevice{ID: sess.DeviceID, UserID: sess.UserID}).
			RunWrite(s.exec, r.RunOpts{Context: ctx})
		if err != nil && !strings.Contains(err.Error(), "Duplicate primary key") {
			return feed.Session{}, err
		}
		if err != nil || res.Errors > 0 {
			return feed.Session{}, feed.ErrDeviceTaken(sess.DeviceID)
		}
		if err := s.table(rdbUsers).Get(sess.UserID).Update(map[string]any{"devices": r.Row.Field("devices").Add(1)}).
			Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return feed.Session{}, err
		}
	}
	sess.Version = json.RawMessage(user.Version)
	return sess, nil
}

// liveTasks reads the user's tasks that are not tombstones, in id order.
func (s *rdbStore) liveTasks(ctx context.Context, userID string) ([]rdbTask, error) {
	cur, err := s.table(rdbTasks).GetAll(userID).OptArgs(r.GetAllOpts{Index: rdbByUser}).Run(s.exec, r.RunOpts{Context: ctx})
	if err != nil {
		return nil, err
	}
	defer cur.Close()
	var docs []rdbTask
	if err := cur.All(&docs); err != nil {
		return nil, err
	}
	docs = slices.DeleteFunc(docs, func(d rdbTask) bool { return d.Deleted })
	slices.SortFunc(docs, func(a, b rdbTask) int { return cmp.Compare(a.TaskID, b.TaskID) })
	return docs, nil
}

func (s *rdbStore) ReadAll(ctx context.Context, userID string) (feed.Snapshot, error) {
	start := time.Now()
	var snap feed.Snapshot
	var user rdbUser
	found, err := s.one(ctx, s.table(rdbUsers).Get(userID), &user)
	if err == nil && !found {
		err = feed.ErrUserNotFound()
	}
	var docs []rdbTask
	if err == nil {
		docs, err = s.liveTasks(ctx, userID)
	}
	if err == nil {
		snap.Version = json.RawMessage(user.Version)
		snap.Tasks = make([]json.RawMessage, len(docs))
		for i, d := range docs {
			snap.Tasks[i] = json.RawMessage(d.Task)
		}
	}
	s.m.Observe("read-all", start, err)
	return snap, err
}

func (s *rdbStore) Write(ctx context.Context, w *feed.Write) error {
	start := time.Now()
	err := s.write(ctx, w)
	s.m.Observe(w.Kind.String(), start, err)
	return err
}

func (s *rdbStore) write(ctx context.Context, w *feed.Write) error {
	var user rdbUser
	if found, err := s.one(ctx, s.table(rdbUsers).Get(w.UserID), &user); err != nil {
		return err
	} else if !found {
		return feed.ErrUserNotFound()
	}
	u := &rdbUserTx{s: s, ctx: ctx, userID: w.UserID, version: json.RawMessage(user.Version),
		TaskCounter: feed.NewTaskCounter(user.Tasks)}
	changes, err := feed.Apply(u, w, s.limits)
	if err != nil {
		return err
	}
	// Each task document is written whole and atomically, with the version
	// and device the feed's notification needs; the user's version and
	// count follow. The feed, not this call, notifies.
	version := string(u.version)
	for _, c := range changes {
		var t r.Term
		if c.Kind == feed.ChangeDelete {
			t = s.table(rdbTasks).Get(taskDocID(w.UserID, c.TaskID)).Update(map[string]any{
				"deleted": true, "task": "", "version": version, "device_id": w.DeviceID,
				"rev": r.Row.Field("rev").Add(1),
			})
		} else {
			doc := rdbTask{ID: taskDocID(w.UserID, c.TaskID), UserID: w.UserID, TaskID: c.TaskID, Task: string(c.Task),
				Version: version, Device: w.DeviceID, Rev: 1}
			t = s.table(rdbTasks).Insert(doc, r.InsertOpts{Conflict: func(_, old, new r.Term) any {
				return new.Merge(map[string]any{"rev": old.Field("rev").Add(1)})
			}})
		}
		if err := t.Exec(s.exec, r.ExecOpts{Context: ctx}); err != nil {
			return err
		}
	}
	return s.table(rdbUsers).Get(w.UserID).Update(map[string]any{"version": version, "tasks": u.Count}).
		Exec(s.exec, r.ExecOpts{Context: ctx})
}

// rdbUserTx gives apply the user's tasks. Mutations only keep the count:
// write turns apply's changes into document writes.
type rdbUserTx struct {
	s       *rdbStore
	ctx     context.Context
	userID  string
	version json.RawMessage
	feed.TaskCounter
}

func (u *rdbUserTx) Version() json.RawMessage { return u.version }

func (u *rdbUserTx) Get(id int64) (json.RawMessage, bool, error) {
	var doc rdbTask
	found, err := u.s.one(u.ctx, u.s.table(rdbTasks).Get(taskDocID(u.userID, id)), &doc)
	if err != nil {
		return nil, false, err
	}
	live := found && !doc.Deleted
	u.Seen(id, live)
	if !live {
		return nil, false, nil
	}
	return json.RawMessage(doc.Task), true, nil
}

func (u *rdbUserTx) All() ([]feed.Task, error) {
	docs, err := u.s.liveTasks(u.ctx, u.userID)
	if err != nil {
		return nil, err
	}
	all := make([]feed.Task, len(docs))
	for i, d := range docs {
		all[i] = feed.Task{ID: d.TaskID, Raw: json.RawMessage(d.Task)}
		u.Seen(d.TaskID, true)
	}
	return all, nil
}

func (u *rdbUserTx) Put(id int64, _ json.RawMessage) error {
	u.Added(id)
	return nil
}

func (u *rdbUserTx) Delete(id int64) error {
	u.Removed(id)
	return nil
}

func (u *rdbUserTx) SetVersion(v json.RawMessage) error {
	u.version = v
	return nil
}
