/*
 * broker.js: the browser side of django-redis-broker's WebSocket relay.
 * No build step, no dependencies. Include it with {% static 'redis_broker/broker.js' %}.
 *
 *   const broker = RedisBroker.connect();            // ws(s)://<this host>/ws/broker/
 *   const off = broker.subscribe("chat.lobby", (data, frame) => { ... });
 *   broker.publish("chat.lobby", {text: "hi"});
 *   broker.on("gap", (channel) => location.reload()); // messages may have been lost
 *   broker.on("error", (frame) => console.warn(frame.code, frame.detail));
 *   broker.on("state", (state, code) => { ... });     // connecting | open | closed | revoked
 *   broker.on("reconnect", (info) => { ... });        // open again after a drop: {attempt, closeCode}
 *   broker.isSubscribed("chat.lobby");                // true once the server confirmed
 *   off();                                            // unsubscribe this callback
 *
 * The socket reconnects with exponential backoff and full jitter, re-subscribes every
 * channel and, on durable channels, passes the id of the last message it saw ("since"),
 * so the server replays what was missed. It stops for good when the server closes it
 * with 4001 (the user logged out or lost access).
 *
 * "reconnect" fires each time the socket opens again after having been open: on
 * channels that are not durable, what was broadcast while it was down is gone, so a page
 * should say so (or reload what it shows).
 *
 * "error" receives the server's error frames ({code, channel, detail}; the codes are
 * bad_request, forbidden, too_large, rate_limited, unavailable) and two made here:
 * too_large when the server closed the socket with 1009 (a frame over the server's own
 * limit, e.g. daphne's 1 MiB) or when publish() refused a frame over maxFrameBytes
 * before sending it ({local: true}), and bad_request on a 1007 close. After a 1009 or
 * 1007 close the socket reconnects as usual.
 *
 * Options of connect(url, options): minDelay, maxDelay (ms), maxPending (publishes kept
 * while disconnected, default 100), maxFrameBytes (largest frame sent, in UTF-8 bytes;
 * default 1 MiB, daphne's limit, so an oversized publish never costs the connection;
 * 0 turns the check off).
 */
(function (global) {
  "use strict";

  var REVOKED = 4001;
  var MESSAGE_TOO_BIG = 1009; // RFC 6455: the server refused a frame over its size limit
  var INVALID_PAYLOAD = 1007; // RFC 6455: the server refused a text frame that is not UTF-8
  var DEFAULT_MAX_FRAME_BYTES = 1048576; // daphne's --websocket-max-message-size default

  /** Return the size of text in UTF-8 bytes (what the server counts). */
  function utf8Length(text) {
    if (global.TextEncoder) { return new global.TextEncoder().encode(text).length; }
    return unescape(encodeURIComponent(text)).length;
  }

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
    this.maxFrameBytes = options.maxFrameBytes === undefined
      ? DEFAULT_MAX_FRAME_BYTES : options.maxFrameBytes; // 0: no check
    this.channels = new Map(); // channel -> {callbacks: Set, lastId: string|null}
    this.listeners = {state: [], subscribed: [], gap: [], error: [], message: [], reconnect: []};
    this.pending = [];
    this.attempt = 0;
    this.wasOpen = false; // "reconnect" fires on an open that follows an earlier one
    this.state = "connecting";
    this.closeCode = null;
    this.lastCloseCode = null; // code of the last close, kept while reconnecting
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
      var attempts = self.attempt;
      var reopened = self.wasOpen;
      self.attempt = 0;
      self.wasOpen = true;
      self._setState("open");
      self.channels.forEach(function (entry, channel) { self._sendSubscribe(channel, entry); });
      var queued = self.pending;
      self.pending = [];
      queued.forEach(function (text) { self._sendText(text); });
      if (reopened) { self._emit("reconnect", {attempt: attempts, closeCode: self.lastCloseCode}); }
    };
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      self._handle(frame);
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) { return; }
      self.channels.forEach(function (entry) { entry.subscribed = false; });
      self.lastCloseCode = event.code;
      if (event.code === MESSAGE_TOO_BIG) {
        self._emit("error", {
          type: "error", code: "too_large", channel: null, closeCode: event.code,
          detail: "the server closed the connection because a frame was over its size limit" +
            (event.reason ? " (" + event.reason + ")" : "") + "; reconnecting"
        });
      } else if (event.code === INVALID_PAYLOAD) {
        self._emit("error", {
          type: "error", code: "bad_request", channel: null, closeCode: event.code,
          detail: "the server closed the connection because a frame was not valid UTF-8; reconnecting"
        });
      }
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

  BrokerSocket.prototype._sendText = function (text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(text);
      return true;
    }
    return false;
  };

  BrokerSocket.prototype._send = function (frame) {
    return this._sendText(JSON.stringify(frame));
  };

  /** Return frame as JSON text, or null (and a local too_large error) when over maxFrameBytes. */
  BrokerSocket.prototype._encode = function (frame) {
    var text = JSON.stringify(frame);
    var limit = this.maxFrameBytes;
    // A UTF-16 unit is at most 3 UTF-8 bytes: most frames need no encoding to be measured.
    if (limit && text.length * 3 > limit) {
      var size = utf8Length(text);
      if (size > limit) {
        this._emit("error", {
          type: "error", code: "too_large", channel: frame.channel, local: true,
          detail: "not sent: the frame is " + size + " bytes, over this page's limit of " +
            limit + " bytes"
        });
        return null;
      }
    }
    return text;
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

  /**
   * Broadcast data on channel (kept briefly while reconnecting). Returns false when the
   * frame was dropped: over maxFrameBytes (a too_large "error" event says so), revoked,
   * or too many publishes already waiting for the connection.
   */
  BrokerSocket.prototype.publish = function (channel, data) {
    var text = this._encode({action: "publish", channel: channel, data: data});
    if (text === null) { return false; }
    if (this._sendText(text)) { return true; }
    if (this.stopped || this.pending.length >= this.maxPending) { return false; }
    this.pending.push(text);
    return true;
  };

  /** Listen to "state", "subscribed", "gap", "error", "message" or "reconnect" events. */
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
