/*
 * broker.js: the browser side of django-redis-broker's WebSocket relay.
 * No build step, no dependencies. Include it with {% static 'redis_broker/broker.js' %}.
 *
 *   const broker = RedisBroker.connect();            // ws(s)://<this host>/ws/broker/
 *   const off = broker.subscribe("chat.lobby", (data, frame) => { ... });
 *   broker.publish("chat.lobby", {text: "hi"});
 *   broker.on("gap", (channel) => location.reload()); // messages may have been lost
 *   broker.on("error", (frame) => console.warn(frame.code, frame.channel));
 *   broker.on("state", (state, code) => { ... });     // connecting | open | closed | revoked
 *   broker.isSubscribed("chat.lobby");                // true once the server confirmed
 *   off();                                            // unsubscribe this callback
 *
 * The socket reconnects with exponential backoff and full jitter, re-subscribes every
 * channel and, on durable channels, passes the id of the last message it saw ("since"),
 * so the server replays what was missed. It stops for good when the server closes it
 * with 4001 (the user logged out or lost access).
 */
(function (global) {
  "use strict";

  var REVOKED = 4001;

  function defaultUrl(path) {
    var scheme = global.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + global.location.host + (path || "/ws/broker/");
  }

  function BrokerSocket(url, options) {
    options = options || {};
    this.url = url || defaultUrl();
    this.minDelay = options.minDelay || 500; // ms, first reconnect delay (before jitter)
    this.maxDelay = options.maxDelay || 15000; // ms, cap of the reconnect delay
    this.maxPending = options.maxPending || 100; // publishes kept while disconnected
    this.channels = new Map(); // channel -> {callbacks: Set, lastId: string|null}
    this.listeners = {state: [], subscribed: [], gap: [], error: [], message: []};
    this.pending = [];
    this.attempt = 0;
    this.state = "connecting";
    this.closeCode = null;
    this.stopped = false;
    this._open();
  }

  BrokerSocket.prototype._emit = function (event) {
    var args = Array.prototype.slice.call(arguments, 1);
    this.listeners[event].forEach(function (fn) {
      try { fn.apply(null, args); } catch (err) { console.error(err); }
    });
  };

  BrokerSocket.prototype._setState = function (state, code) {
    this.state = state;
    this.closeCode = code === undefined ? null : code;
    this._emit("state", state, this.closeCode);
  };

  BrokerSocket.prototype._open = function () {
    var self = this;
    var ws = new WebSocket(this.url);
    this.ws = ws;
    this._setState("connecting");
    ws.onopen = function () {
      self.attempt = 0;
      self._setState("open");
      self.channels.forEach(function (entry, channel) { self._sendSubscribe(channel, entry); });
      var queued = self.pending;
      self.pending = [];
      queued.forEach(function (frame) { self._send(frame); });
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      self._handle(frame);
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) { return; }
      self.channels.forEach(function (entry) { entry.subscribed = false; });
      if (event.code === REVOKED) {
        self.stopped = true;
        self._setState("revoked", event.code);
        return;
      }
      self._setState("closed", event.code);
      if (self.stopped) { return; }
      var cap = Math.min(self.maxDelay, self.minDelay * Math.pow(2, self.attempt));
      self.attempt += 1;
      self.timer = setTimeout(function () { self._open(); }, Math.random() * cap);
    };
  };

  BrokerSocket.prototype._handle = function (frame) {
    if (frame.type === "message") {
      var entry = this.channels.get(frame.channel);
      if (!entry) { return; }
      if (frame.id) { entry.lastId = frame.id; }
      entry.callbacks.forEach(function (fn) {
        try { fn(frame.data, frame); } catch (err) { console.error(err); }
      });
      this._emit("message", frame);
    } else if (frame.type === "subscribed") {
      var subscribed = this.channels.get(frame.channel);
      if (subscribed) { subscribed.subscribed = true; }
      this._emit("subscribed", frame.channel);
    } else if (frame.type === "gap") {
      this._emit("gap", frame.channel, frame);
    } else if (frame.type === "error") {
      this._emit("error", frame);
    }
  };

  BrokerSocket.prototype._send = function (frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  };

  BrokerSocket.prototype._sendSubscribe = function (channel, entry) {
    var frame = {action: "subscribe", channel: channel};
    if (entry.lastId) { frame.since = entry.lastId; }
    this._send(frame);
  };

  /** Call callback(data, frame) for every message on channel; returns an unsubscribe function. */
  BrokerSocket.prototype.subscribe = function (channel, callback, options) {
    var entry = this.channels.get(channel);
    if (!entry) {
      entry = {callbacks: new Set(), lastId: (options && options.since) || null};
      this.channels.set(channel, entry);
      this._sendSubscribe(channel, entry);
    }
    entry.callbacks.add(callback);
    var self = this;
    return function () {
      entry.callbacks.delete(callback);
      if (entry.callbacks.size === 0 && self.channels.get(channel) === entry) {
        self.channels.delete(channel);
        self._send({action: "unsubscribe", channel: channel});
      }
    };
  };

  /** True once the server confirmed the subscription on the current connection. */
  BrokerSocket.prototype.isSubscribed = function (channel) {
    var entry = this.channels.get(channel);
    return Boolean(entry && entry.subscribed);
  };

  /** Broadcast data on channel (kept briefly while reconnecting). */
  BrokerSocket.prototype.publish = function (channel, data) {
    var frame = {action: "publish", channel: channel, data: data};
    if (!this._send(frame) && !this.stopped && this.pending.length < this.maxPending) {
      this.pending.push(frame);
    }
  };

  /** Listen to "state", "subscribed", "gap", "error" or "message" events. */
  BrokerSocket.prototype.on = function (event, fn) {
    this.listeners[event].push(fn);
    return this;
  };

  /** Close the socket for good. */
  BrokerSocket.prototype.close = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) { this.ws.close(1000); }
  };

  global.RedisBroker = {
    BrokerSocket: BrokerSocket,
    connect: function (url, options) { return new BrokerSocket(url, options); }
  };
})(window);
