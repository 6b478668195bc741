"""Mandarin test sentences for intelligibility checks and the benchmark.

Written for this project (no copyright issues): everyday, news-like and assistant-like, 8-25
characters, common characters only, no digits or Latin, and no polyphones whose reading depends
on context in a way a TTS front end or pypinyin could plausibly get wrong (e.g. 地 as a particle,
行, 长, 还, 都, 重).

How to call::

    from streamtts.evaluation.sentences import TEST_SENTENCES
"""

from __future__ import annotations

TEST_SENTENCES: tuple[str, ...] = (
    "今天天气很好，我们一起去公园散步吧。",
    "请问去火车站怎么走？",
    "新闻报道说，明天早上会有小雨。",
    "我已经帮你把会议安排在下午三点。",
    "这家餐厅的菜很好吃，价格也不贵。",
    "市政府宣布将在明年修建一座新图书馆。",
    "如果你需要帮助，随时可以告诉我。",
    "他每天早上六点起床，然后去跑步。",
    "这本书讲的是一个普通人的故事。",
    "请把窗户关上，外面风太大了。",
    "科学家发现了一种新的治疗方法。",
    "我们的航班因为天气原因推迟起飞。",
    "谢谢你的耐心，我马上为你查询。",
    "周末我打算和朋友一起看电影。",
    "冬天快到了，记得多穿一件衣服。",
    "孩子们放学以后在操场上踢足球。",
)
