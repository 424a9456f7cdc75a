// chat-log.js: the chat panel's message list (rendering only; sending is the app's business).
//
// Text is always set with textContent: a peer's message can never inject markup.

const MAX_ITEMS = 300;

export class ChatLog {
  /** @param {HTMLOListElement} list */
  constructor(list) {
    this.list = list;
  }

  /** A chat message: { name, text, mine, color (CSS), note? (shown under it) }. */
  message({ name, text, mine, color, note }) {
    const li = document.createElement('li');
    li.className = mine ? 'msg mine' : 'msg';
    li.style.setProperty('--peer-color', color);
    const head = document.createElement('div');
    head.className = 'msg-head';
    const who = document.createElement('span');
    who.className = 'msg-name';
    who.textContent = name;
    const when = document.createElement('time');
    when.textContent = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    head.append(who, when);
    const body = document.createElement('div');
    body.className = 'msg-text';
    body.textContent = text;
    li.append(head, body);
    if (note) {
      const warn = document.createElement('div');
      warn.className = 'msg-note';
      warn.textContent = note;
      li.append(warn);
    }
    this._append(li);
  }

  /** A line about the room ("Bob joined"). */
  system(text) {
    const li = document.createElement('li');
    li.className = 'msg system';
    li.textContent = text;
    this._append(li);
  }

  _append(li) {
    const log = this.list;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(li);
    while (log.children.length > MAX_ITEMS) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }
}
